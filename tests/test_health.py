"""``--health-port`` of real scheduler and worker processes: /healthz stays up through a
database outage, /readyz follows the database, the Redis broker and a draining stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from chronoq import App
from chronoq.models import TaskCreate
from tests.conftest import make_settings
from tests.processes import ROOT, Proc, cli, free_port
from tests.test_outage import Proxy


async def _wait_code(
    http: httpx.AsyncClient, url: str, code: int, proc: Proc, timeout: float = 20
) -> httpx.Response:
    """Poll ``url`` (without blocking the loop the proxy runs on) until it answers ``code``."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.args} exited:\n{proc.output()}")
        try:
            response = await http.get(url, timeout=3)
            if response.status_code == code:
                return response
            last = f"{response.status_code} {response.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url}: wanted {code}, last {last}\n{proc.output()}")


async def test_health_ports_follow_the_database(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    proxy = Proxy()
    await proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    env = {
        "CHRONOQ_DATABASE_URL": url,
        "CHRONOQ_BROKER_URL": "redis://127.0.0.1:6379/11",
        "CHRONOQ_POLL_SECONDS": "0.2",
        "CHRONOQ_LOG_LEVEL": "warning",
    }
    ports = {"scheduler": free_port(), "worker": free_port()}
    for name, port in ports.items():
        # the worker's port comes from the environment, the scheduler's from the flag
        args = [name] if name == "worker" else [name, "--health-port", str(port)]
        extra = {"CHRONOQ_HEALTH_PORT": f"127.0.0.1:{port}"} if name == "worker" else {}
        procs.append(Proc(args, {**env, **extra}, tmp_path / f"{name}.log"))
    async with httpx.AsyncClient() as http:
        try:
            for proc, port in zip(procs, ports.values(), strict=True):
                base = f"http://127.0.0.1:{port}"
                ready = await _wait_code(http, f"{base}/readyz", 200, proc)
                assert ready.json() == {"status": "ready"}
                assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
                assert (await http.get(f"{base}/nope")).status_code == 404

            await proxy.cut()
            for proc, port in zip(procs, ports.values(), strict=True):
                base = f"http://127.0.0.1:{port}"
                down = await _wait_code(http, f"{base}/readyz", 503, proc)
                error = down.json()["error"]
                assert error["code"] == "not_ready" and error["details"][0].startswith("store"), (
                    proc.output()
                )
                # alive all the same: an outage must not get every pod restarted
                assert (await http.get(f"{base}/healthz")).status_code == 200

            await proxy.start()  # same port: the database is back
            for proc, port in zip(procs, ports.values(), strict=True):
                await _wait_code(http, f"http://127.0.0.1:{port}/readyz", 200, proc)
        finally:
            for proc in procs:  # in a thread: the proxy runs on this loop
                await asyncio.to_thread(proc.terminate)
            await proxy.cut()


async def test_readyz_names_an_unreachable_broker(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    redis = Proxy(upstream=6379)
    await redis.start()
    port = free_port()
    worker = Proc(
        ["worker", "--health-port", str(port)],
        {
            "CHRONOQ_DATABASE_URL": pg_url,
            "CHRONOQ_LOG_LEVEL": "warning",
            "CHRONOQ_BROKER_URL": f"redis://127.0.0.1:{redis.port}/0",
        },
        tmp_path / "worker.log",
    )
    procs.append(worker)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        try:
            await _wait_code(http, f"{base}/readyz", 200, worker)
            await redis.cut()
            down = await _wait_code(http, f"{base}/readyz", 503, worker)
            assert [d.split(":")[0] for d in down.json()["error"]["details"]] == ["redis redis"], (
                down.text
            )
            assert (await http.get(f"{base}/healthz")).status_code == 200
        finally:
            await asyncio.to_thread(worker.terminate)
            await redis.cut()


async def test_draining_worker_is_alive_but_not_ready(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """SIGTERM: while the worker drains its running task, /readyz says stopping and
    /healthz stays 200 (a liveness probe must not kill the drain)."""
    port = free_port()
    worker = Proc(
        ["worker", "--health-port", str(port), "--shell-allow", "sleep"],
        {
            "CHRONOQ_DATABASE_URL": pg_url,
            "CHRONOQ_POLL_SECONDS": "0.2",
            "CHRONOQ_LOG_LEVEL": "warning",
        },
        tmp_path / "worker.log",
    )
    procs.append(worker)
    base = f"http://127.0.0.1:{port}"
    async with App(settings=make_settings(pg_url)) as app, httpx.AsyncClient() as http:
        await _wait_code(http, f"{base}/readyz", 200, worker)
        # the image's HEALTHCHECK: 0.0.0.0 (what containers listen on) is probed on loopback
        assert await asyncio.to_thread(_probe, f"0.0.0.0:{port}") == 0
        task = await app.submit(
            TaskCreate(name="chronoq.shell", payload={"command": "sleep", "args": ["3"]})
        )
        deadline = time.monotonic() + 15
        while (await app.store.get_task(task.id)).status != "running":
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.05)
        worker.popen.send_signal(signal.SIGTERM)
        stopping = await _wait_code(http, f"{base}/readyz", 503, worker)
        assert stopping.json()["error"]["details"] == ["stopping"]
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert await asyncio.to_thread(worker.popen.wait, 20) == 0
        assert (await app.store.get_task(task.id)).status == "succeeded"
        assert await asyncio.to_thread(_probe, str(port)) == 1  # nothing answers now


def _probe(health_port: str) -> int:
    """``python -m chronoq.health``, as the image's HEALTHCHECK runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHRONOQ_PORT",)}
    return subprocess.run(
        [sys.executable, "-m", "chronoq.health"],
        cwd=ROOT,
        timeout=30,
        env={**env, "CHRONOQ_HEALTH_PORT": health_port},
    ).returncode


def test_bad_health_port_is_a_usage_error(tmp_path: Path) -> None:
    for args, env in ((["--health-port", "nine"], {}), ([], {"CHRONOQ_HEALTH_PORT": "x:y"})):
        result = cli(
            "scheduler",
            *args,
            env={"CHRONOQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **env},
        )
        assert result.returncode == 2, result.stderr
        assert "--health-port" in result.stderr and "Traceback" not in result.stderr
