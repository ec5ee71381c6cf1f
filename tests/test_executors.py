"""Built-in executors for non-Python clients: ``chronoq.http`` and allow-listed shell."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chronoq.executors import HttpExecutor, ShellExecutor, TaskFailed
from chronoq.executors.http import MAX_RESPONSE_BYTES, parse_allow
from chronoq.worker import Worker, builtin_executors
from tests.conftest import Harness

LOCAL = ("127.0.0.1/32",)


def start_worker(
    harness: Harness, *, http_allow: Iterable[str] = LOCAL, shell_allow: Iterable[str] = ()
) -> Worker:
    """A worker like ``harness.start_worker`` with an HTTP allow-list (the test server
    listens on 127.0.0.1, which chronoq.http refuses by default)."""
    s = harness.app.settings
    worker = Worker(
        harness.store,
        {**builtin_executors(shell_allow, http_allow), **harness.app.executors()},
        concurrency=4,
        lease_seconds=s.lease_seconds,
        heartbeat_seconds=s.heartbeat_seconds,
        poll_seconds=s.poll_seconds,
    )
    harness.workers.append((worker, asyncio.create_task(worker.run(drain_seconds=5))))
    return worker


class _Handler(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"null")
        self.received.append(
            {"path": self.path, "body": body, "auth": self.headers.get("authorization")}
        )
        status = 500 if self.path == "/broken" else 200
        payload = json.dumps({"ok": status == 200}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.received.append({"path": self.path, "host": self.headers.get("host")})
        if self.path.startswith("/big"):
            body = b"x" * (MAX_RESPONSE_BYTES + 1)
        else:
            body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        if self.path != "/big-unsized":  # without a length: read until the server closes
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    _Handler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_http_executor_calls_the_url(harness: Harness, web: str) -> None:
    start_worker(harness)
    task = await harness.submit(
        name="chronoq.http",
        payload={
            "url": f"{web}/hook",
            "json": {"order": 7},
            "headers": {"authorization": "Bearer t"},
        },
    )
    done = await harness.wait_for(task["id"], "succeeded")
    assert done["result"] == {"status_code": 200, "body": {"ok": True}}
    assert _Handler.received == [{"path": "/hook", "body": {"order": 7}, "auth": "Bearer t"}]


async def test_http_executor_non_2xx_is_a_failure(harness: Harness, web: str) -> None:
    start_worker(harness)
    task = await harness.submit(
        name="chronoq.http", max_attempts=1, payload={"url": f"{web}/broken", "json": {}}
    )
    dead = await harness.wait_for(task["id"], "dead")
    assert "answered 500" in dead["error"]


async def test_http_executor_rejects_bad_payload(harness: Harness) -> None:
    start_worker(harness)
    task = await harness.submit(name="chronoq.http", max_attempts=3, payload={"url": "not a url"})
    dead = await harness.wait_for(task["id"], "dead")
    assert "bad chronoq.http payload" in dead["error"]
    assert dead["attempts"] == 1  # a payload no retry can mend: dead at once


async def test_shell_executor_runs_only_allow_listed_programs(harness: Harness) -> None:
    harness.start_worker(shell_allow=["echo"])
    ok = await harness.submit(
        name="chronoq.shell", payload={"command": "echo", "args": ["hello", "world"]}
    )
    refused = await harness.submit(
        name="chronoq.shell", max_attempts=1, payload={"command": "rm", "args": ["-rf", "/tmp/x"]}
    )
    done = await harness.wait_for(ok["id"], "succeeded")
    assert done["result"]["stdout"] == "hello world\n"
    assert done["result"]["exit_code"] == 0
    dead = await harness.wait_for(refused["id"], "dead")
    assert "not in this worker's shell allow-list" in dead["error"]


async def test_shell_executor_is_off_without_allow_list(harness: Harness) -> None:
    harness.start_worker()
    task = await harness.submit(name="chronoq.shell", max_attempts=1, payload={"command": "echo"})
    dead = await harness.wait_for(task["id"], "dead")
    assert "no handler named 'chronoq.shell'" in dead["error"]


async def test_shell_executor_kills_on_timeout(harness: Harness) -> None:
    harness.start_worker(shell_allow=["sleep"])
    task = await harness.submit(
        name="chronoq.shell",
        max_attempts=1,
        timeout_seconds=0.3,
        payload={"command": "sleep", "args": ["30"]},
    )
    dead = await harness.wait_for(task["id"], "dead")
    assert dead["attempt_history"][0]["outcome"] == "timeout"


async def test_shell_nonzero_exit_fails(harness: Harness) -> None:
    harness.start_worker(shell_allow=["false"])
    task = await harness.submit(name="chronoq.shell", max_attempts=1, payload={"command": "false"})
    dead = await harness.wait_for(task["id"], "dead")
    assert "exited with 1" in dead["error"]


# -- chronoq.http: server-side request forgery ------------------------------------------------
async def _dead_error(harness: Harness, url: str) -> str:
    task = await harness.submit(
        name="chronoq.http", max_attempts=1, payload={"url": url, "method": "GET"}
    )
    dead = await harness.wait_for(task["id"], "dead")
    error: str = dead["error"]
    return error


async def test_http_refuses_loopback_without_allow_list(harness: Harness, web: str) -> None:
    start_worker(harness, http_allow=())
    error = await _dead_error(harness, f"{web}/hook")
    assert "refused to connect to 127.0.0.1" in error
    assert "loopback" in error
    assert "127.0.0.1/32" in error and "--http-allow" in error  # says how to allow it
    assert _Handler.received == []  # never connected


async def test_http_refuses_cloud_metadata(harness: Harness) -> None:
    start_worker(harness, http_allow=())
    error = await _dead_error(harness, "http://169.254.169.254/latest/meta-data/")
    assert "169.254.169.254 is link-local" in error
    assert "metadata" in error


async def test_http_refuses_a_hostname_that_resolves_to_loopback(
    harness: Harness, web: str
) -> None:
    start_worker(harness, http_allow=())
    port = web.rsplit(":", 1)[1]
    error = await _dead_error(harness, f"http://localhost:{port}/hook")
    assert "refused to connect to localhost" in error
    assert "127.0.0.1 is loopback" in error
    assert "the host name localhost" in error
    assert _Handler.received == []


async def test_http_allows_a_hostname_by_cidr_and_by_name(harness: Harness, web: str) -> None:
    port = web.rsplit(":", 1)[1]
    start_worker(harness, http_allow=("127.0.0.1/32",))  # localhost's ::1 stays refused
    by_cidr = await harness.submit(
        name="chronoq.http", payload={"url": f"http://localhost:{port}/by-cidr", "method": "GET"}
    )
    assert (await harness.wait_for(by_cidr["id"], "succeeded"))["result"]["status_code"] == 200
    await harness.stop_workers()
    start_worker(harness, http_allow=("localhost",))
    by_name = await harness.submit(
        name="chronoq.http", payload={"url": f"http://localhost:{port}/by-name", "method": "GET"}
    )
    assert (await harness.wait_for(by_name["id"], "succeeded"))["result"]["body"] == {"ok": True}
    assert [r["path"] for r in _Handler.received] == ["/by-cidr", "/by-name"]


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
async def test_http_oversized_answer_fails(harness: Harness, web: str, path: str) -> None:
    start_worker(harness)
    error = await _dead_error(harness, f"{web}{path}")
    assert f"chronoq.http reads at most {MAX_RESPONSE_BYTES} bytes" in error


async def test_http_timeout_covers_the_answer(web: str) -> None:
    executor = HttpExecutor(LOCAL)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:  # accepts, never answers
        with pytest.raises(TaskFailed, match=r"timed out reading|within 0\.3s"):
            await executor.run(
                {
                    "url": f"http://127.0.0.1:{server.getsockname()[1]}/",
                    "method": "GET",
                    "timeout_seconds": 0.3,
                }
            )
    finally:
        server.close()
        await executor.close()


@pytest.mark.parametrize(
    ("entries", "address", "refused"),
    [
        ((), "8.8.8.8", False),
        ((), "2001:4860:4860::8888", False),
        ((), "10.1.2.3", True),
        ((), "172.16.0.1", True),
        ((), "192.168.1.1", True),
        ((), "100.64.0.1", True),
        ((), "0.0.0.0", True),
        ((), "224.0.0.1", True),
        ((), "240.0.0.1", True),
        ((), "::1", True),
        ((), "::", True),
        ((), "fe80::1", True),
        ((), "fd00::1", True),
        ((), "ff02::1", True),
        ((), "::ffff:127.0.0.1", True),
        ((), "64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ((), "2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        (("10.0.0.0/8",), "10.1.2.3", False),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("10.0.0.0/8",), "192.168.1.1", True),
        (("fd00::/8",), "fd00::1", False),
        (("127.0.0.1",), "127.0.0.1", False),
        (("127.0.0.1",), "127.0.0.2", True),
    ],
)
def test_address_policy(entries: tuple[str, ...], address: str, refused: bool) -> None:
    import ipaddress

    reason = parse_allow(entries).refusal("example.org", ipaddress.ip_address(address))
    assert (reason is not None) == refused, reason


def test_bad_allow_list_entries_are_refused() -> None:
    for bad in ["10.0.0.0/33", "http://x", "a b", "-x-", "x/8"]:
        with pytest.raises(ValueError, match="neither a hostname nor an IP network"):
            parse_allow(bad)
    allow = parse_allow(" 127.0.0.1/32, Internal.Example.com. ,,[::1]")
    assert allow.hosts == {"internal.example.com"}
    assert [str(n) for n in allow.networks] == ["127.0.0.1/32", "::1/128"]


@pytest.fixture
async def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names resolved by the test itself (the system resolver does not know them), the
    way a DNS server under an attacker's control would answer."""
    names: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in names:
            return [
                (
                    socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (names[host], int(port or 0)),
                )
            ]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return names


async def test_http_connects_to_the_vetted_address(fake_dns: dict[str, str], web: str) -> None:
    """The socket goes to the address that was checked; the Host header keeps the name."""
    port = web.rsplit(":", 1)[1]
    fake_dns["hooks.example"] = "127.0.0.1"
    refusing = HttpExecutor(())
    allowing = HttpExecutor(LOCAL)
    try:
        with pytest.raises(TaskFailed, match=r"refused to connect to hooks\.example"):
            await refusing.run({"url": f"http://hooks.example:{port}/x", "method": "GET"})
        result = await allowing.run({"url": f"http://hooks.example:{port}/x", "method": "GET"})
    finally:
        await refusing.close()
        await allowing.close()
    assert result == {"status_code": 200, "body": {"ok": True}}
    assert _Handler.received == [{"path": "/x", "host": f"hooks.example:{port}"}]


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 whose certificate names ``secure.example``."""
    cert, key = _certificate(tmp_path, "secure.example")
    _Handler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield str(server.server_address[1]), cert
    server.shutdown()


async def test_https_to_a_pinned_address_verifies_the_hostname(
    fake_dns: dict[str, str], tls_web: tuple[str, Path]
) -> None:
    port, cert = tls_web
    fake_dns["secure.example"] = "127.0.0.1"
    fake_dns["other.example"] = "127.0.0.1"
    trusted = ssl.create_default_context(cafile=str(cert))
    executor = HttpExecutor(LOCAL, verify=trusted)
    try:
        result = await executor.run({"url": f"https://secure.example:{port}/tls", "method": "GET"})
        assert result["body"] == {"ok": True}
        # same address, a name the certificate does not carry: TLS refuses
        with pytest.raises(TaskFailed, match=r"Hostname mismatch"):
            await executor.run({"url": f"https://other.example:{port}/tls", "method": "GET"})
    finally:
        await executor.close()
    assert _Handler.received == [{"path": "/tls", "host": f"secure.example:{port}"}]


# -- chronoq.shell: literal arguments, exact paths ----------------------------------------------
async def test_shell_metacharacters_in_args_are_literal(harness: Harness) -> None:
    harness.start_worker(shell_allow=["echo"])
    hostile = ["$(id); rm -rf /", "`whoami`", "a | b && c", "*", "'\"", "$HOME"]
    task = await harness.submit(name="chronoq.shell", payload={"command": "echo", "args": hostile})
    done = await harness.wait_for(task["id"], "succeeded")
    assert done["result"]["stdout"] == " ".join(hostile) + "\n"


async def test_shell_paths_must_be_listed_exactly() -> None:
    echo = shutil.which("echo")
    assert echo is not None
    by_name = ShellExecutor(["echo"])
    with pytest.raises(
        TaskFailed,
        match=r"not in this worker's shell allow-list.*allowed "
        r"by name",
    ):
        await by_name.run({"command": echo, "args": ["x"]})
    for sneaky in ["./echo", "../bin/echo", "bin/echo", "echo/"]:
        with pytest.raises(TaskFailed, match="not in this worker's shell allow-list"):
            await by_name.run({"command": sneaky})
    assert (await by_name.run({"command": "echo", "args": ["ok"]}))["stdout"] == "ok\n"
    by_path = ShellExecutor([echo])
    assert (await by_path.run({"command": echo, "args": ["ok"]}))["stdout"] == "ok\n"
    with pytest.raises(TaskFailed, match="not in this worker's shell allow-list"):
        await by_path.run({"command": "echo"})
    with pytest.raises(ValueError, match="absolute path"):
        ShellExecutor(["bin/echo"])


async def test_shell_env_cannot_change_the_program(tmp_path: Path) -> None:
    fake = tmp_path / "echo"
    fake.write_text("#!/bin/sh\necho hijacked\n")
    fake.chmod(0o755)
    executor = ShellExecutor(["echo"], env_allow=["GREETING"])
    for env in [
        {"PATH": str(tmp_path)},
        {"LD_PRELOAD": str(tmp_path / "x.so")},
        {"path": str(tmp_path)},
    ]:
        with pytest.raises(TaskFailed, match="which this worker does not allow"):
            await executor.run({"command": "echo", "args": ["hi"], "env": env})
    # the program is looked up on the worker's PATH, whatever the task's cwd
    result = await executor.run(
        {"command": "echo", "args": ["hi"], "cwd": str(tmp_path), "env": {"GREETING": "x"}}
    )
    assert result["stdout"] == "hi\n"
    assert os.environ.get("PATH")
