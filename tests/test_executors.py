"""Built-in executors for non-Python clients: ``chronoq.http`` and allow-listed shell."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import Harness


class _Handler(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"null")
        self.received.append({"path": self.path, "body": body,
                              "auth": self.headers.get("authorization")})
        status = 500 if self.path == "/broken" else 200
        payload = json.dumps({"ok": status == 200}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

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
    harness.start_worker()
    task = await harness.submit(name="chronoq.http", payload={
        "url": f"{web}/hook", "json": {"order": 7}, "headers": {"authorization": "Bearer t"}})
    done = await harness.wait_for(task["id"], "succeeded")
    assert done["result"] == {"status_code": 200, "body": {"ok": True}}
    assert _Handler.received == [{"path": "/hook", "body": {"order": 7}, "auth": "Bearer t"}]


async def test_http_executor_non_2xx_is_a_failure(harness: Harness, web: str) -> None:
    harness.start_worker()
    task = await harness.submit(name="chronoq.http", max_attempts=1,
                                payload={"url": f"{web}/broken", "json": {}})
    dead = await harness.wait_for(task["id"], "dead")
    assert "answered 500" in dead["error"]


async def test_http_executor_rejects_bad_payload(harness: Harness) -> None:
    harness.start_worker()
    task = await harness.submit(name="chronoq.http", max_attempts=1,
                                payload={"url": "not a url"})
    dead = await harness.wait_for(task["id"], "dead")
    assert "bad chronoq.http payload" in dead["error"]


async def test_shell_executor_runs_only_allow_listed_programs(harness: Harness) -> None:
    harness.start_worker(shell_allow=["echo"])
    ok = await harness.submit(name="chronoq.shell", payload={"command": "echo",
                                                             "args": ["hello", "world"]})
    refused = await harness.submit(name="chronoq.shell", max_attempts=1,
                                   payload={"command": "rm", "args": ["-rf", "/tmp/x"]})
    done = await harness.wait_for(ok["id"], "succeeded")
    assert done["result"]["stdout"] == "hello world\n"
    assert done["result"]["exit_code"] == 0
    dead = await harness.wait_for(refused["id"], "dead")
    assert "not in this worker's shell allow-list" in dead["error"]


async def test_shell_executor_is_off_without_allow_list(harness: Harness) -> None:
    harness.start_worker()
    task = await harness.submit(name="chronoq.shell", max_attempts=1,
                                payload={"command": "echo"})
    dead = await harness.wait_for(task["id"], "dead")
    assert "no handler named 'chronoq.shell'" in dead["error"]


async def test_shell_executor_kills_on_timeout(harness: Harness) -> None:
    harness.start_worker(shell_allow=["sleep"])
    task = await harness.submit(name="chronoq.shell", max_attempts=1, timeout_seconds=0.3,
                                payload={"command": "sleep", "args": ["30"]})
    dead = await harness.wait_for(task["id"], "dead")
    assert dead["attempt_history"][0]["outcome"] == "timeout"


async def test_shell_nonzero_exit_fails(harness: Harness) -> None:
    harness.start_worker(shell_allow=["false"])
    task = await harness.submit(name="chronoq.shell", max_attempts=1,
                                payload={"command": "false"})
    dead = await harness.wait_for(task["id"], "dead")
    assert "exited with 1" in dead["error"]
