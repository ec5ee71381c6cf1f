"""A database outage: the API answers 503 with a retry hint, and recovers by itself; an API
killed mid-request leaves no half-written task.

The outage is made by cutting a TCP proxy between chronoq and PostgreSQL or Redis (every
connection is dropped and new ones are refused), so the shared server keeps running for
other tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chronoq import App
from chronoq.broker.redis import RedisBroker
from chronoq.events import EventBus, TaskEvent
from chronoq.store import create_store, opened
from tests.conftest import Harness, make_settings
from tests.processes import Proc, free_port, wait_ready
from tests.waiting import until


class Proxy:
    """127.0.0.1:<port> → PostgreSQL (or ``upstream``), which can be cut and restored."""

    def __init__(self, upstream: int = 5432) -> None:
        self.upstream = upstream
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[Harness, Proxy]]:
    proxy = Proxy()
    await proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    app = App(settings=make_settings(url))
    await app.open()
    harness = Harness(app)
    try:
        yield harness, proxy
    finally:
        with contextlib.suppress(Exception):
            await harness.close()
        with contextlib.suppress(Exception):
            await proxy.cut()


async def test_outage_is_503_with_retry_after_and_recovers(
    proxied: tuple[Harness, Proxy],
) -> None:
    harness, proxy = proxied
    before = await harness.submit(name="x", idempotency_key="k1")
    await proxy.cut()
    for request in (
        harness.http.get("/v1/tasks"),
        harness.http.post("/v1/tasks", json={"name": "x"}),
        harness.http.get(f"/v1/tasks/{before['id']}"),
    ):
        response = await request
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        body = response.json()["error"]
        assert body["code"] == "store_unavailable" and "retry" in body["message"]
    assert (await harness.http.get("/readyz")).status_code == 503
    assert (await harness.http.get("/healthz")).status_code == 200

    await proxy.start()  # the database is back: no restart of chronoq needed
    for _ in range(50):
        response = await harness.http.get("/v1/tasks")
        if response.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert response.status_code == 200
    again = await harness.http.post("/v1/tasks", json={"name": "x", "idempotency_key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == before["id"]
    assert (await harness.http.get("/readyz")).status_code == 200


def test_api_killed_mid_request_leaves_no_half_written_task(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """kill -9 the API while 16 clients submit; after a restart, resubmitting every request
    with its idempotency key gives exactly one complete task per key."""
    env = {"CHRONOQ_DATABASE_URL": pg_url, "CHRONOQ_AUTH": "0", "CHRONOQ_LOG_LEVEL": "warning"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Proc(["api", "--port", str(port)], env, tmp_path / "api1.log")
    procs.append(api)
    wait_ready(url, api)
    answered: dict[str, str] = {}
    local = threading.local()

    def submit(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=5)
        key = f"k{i}"
        try:
            response = local.http.post(
                "/v1/tasks",
                json={"name": "x", "idempotency_key": key, "payload": {"i": i, "pad": "x" * 2000}},
            )
        except httpx.HTTPError:
            return  # no answer: the client does not know whether it was accepted
        if response.status_code in (200, 201):
            answered[key] = response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(submit, i) for i in range(3000)]
        while len(answered) < 300:
            time.sleep(0.01)
        api.kill()
        for future in futures:
            future.result()
    assert 300 <= len(answered) < 3000

    again = Proc(["api", "--port", str(port)], env, tmp_path / "api2.log")
    procs.append(again)
    wait_ready(url, again)
    with httpx.Client(base_url=url, timeout=10) as http:
        for i in range(3000):
            key = f"k{i}"
            response = http.post(
                "/v1/tasks",
                json={"name": "x", "idempotency_key": key, "payload": {"i": i, "pad": "x" * 2000}},
            )
            assert response.status_code in (200, 201), response.text
            task = response.json()
            if key in answered:
                assert response.status_code == 200 and task["id"] == answered[key]
            assert task["payload"]["i"] == i and task["status"] == "queued"
        page = http.get("/v1/queues").json()
    assert sum(q["counts"]["queued"] for q in page) == 3000  # one task per key, none torn


async def test_scheduler_and_worker_back_off_while_the_database_is_down(
    proxied: tuple[Harness, Proxy], caplog: pytest.LogCaptureFixture
) -> None:
    """5 s without PostgreSQL: the scheduler, the worker's claim loop and heartbeat each log
    one traceback and then one line per retry (it logged 300-500 tracebacks a second), and
    all of them work again by themselves once the database is back."""
    harness, proxy = proxied
    caplog.set_level(logging.INFO, logger="chronoq")

    @harness.app.task("x")
    async def x() -> str:
        return "ran"

    scheduler = harness.start_scheduler()
    harness.start_worker()
    for _ in range(100):
        if scheduler.leading:
            break
        await asyncio.sleep(0.05)
    assert scheduler.leading
    await proxy.cut()
    cut_at = len(caplog.records)
    await asyncio.sleep(5)
    during = [r for r in caplog.records[cut_at:] if r.name.startswith("chronoq")]
    tracebacks = [r for r in during if r.exc_info]
    assert len(tracebacks) <= 5, [r.getMessage() for r in tracebacks]
    rounds = [r for r in during if r.getMessage().startswith("scheduler round failed")]
    assert 2 <= len(rounds) <= 4, [r.getMessage() for r in rounds]  # 1 s, 2 s, 4 s apart
    assert sum(1 for r in rounds if r.exc_info) == 1
    assert len(during) < 60, [r.getMessage() for r in during]

    await proxy.start()
    deadline = time.monotonic() + 20
    while "scheduler round works again" not in caplog.text:
        assert time.monotonic() < deadline, "the scheduler did not recover"
        await asyncio.sleep(0.1)
    later = await harness.submit(name="x", delay_seconds=0.3)
    assert (await harness.wait_for(later["id"], "succeeded", timeout=15))["result"] == "ran"


async def test_worker_started_during_an_outage_waits_for_the_database(
    proxied: tuple[Harness, Proxy], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose registration meets an outage retries it (it used to crash the
    process) and is not serving until it is in; then it runs tasks as usual."""
    harness, proxy = proxied

    @harness.app.task("x")
    async def x() -> str:
        return "ran"

    await proxy.cut()
    worker = harness.start_worker(worker_id="late")
    job = harness.workers[-1][1]

    async def retried() -> bool:  # a second registration attempt failed
        return "registering the worker failed again" in caplog.text

    await until(retried, "the worker never retried its registration", 15)
    assert not job.done() and not worker.serving.is_set()
    await proxy.start()
    await asyncio.wait_for(worker.serving.wait(), 15)
    task = await harness.submit(name="x")
    assert (await harness.wait_for(task["id"], "succeeded", timeout=15))["result"] == "ran"
    workers = (await harness.http.get("/v1/workers")).json()
    assert "late" in [w["id"] for w in workers]


async def test_redis_loops_back_off_while_redis_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """5 s without Redis: the broker's reads and the event bridge back off (one traceback
    each, then a line per retry) and work again by themselves."""
    proxy = Proxy(upstream=6379)
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/9"
    queue = f"outage{uuid.uuid4().hex[:8]}"
    bus, direct = EventBus(url), EventBus("redis://127.0.0.1:6379/9")
    async with opened(create_store(f"sqlite:///{tmp_path / 'db'}")) as store:
        broker = RedisBroker(url, store, "w1", [queue], 30.0)
        await asyncio.gather(bus.start(), direct.start(), broker.start())
        try:
            caplog.set_level(logging.INFO, logger="chronoq")
            await proxy.cut()
            cut_at = len(caplog.records)
            fetches = 0
            until = time.monotonic() + 5
            while time.monotonic() < until:
                fetches += 1
                assert await broker.fetch(1, 0.2) == []
                bus.publish([TaskEvent("t", "x", queue, "queued", 0, time.time())])
            during = [r for r in caplog.records[cut_at:] if r.name.startswith("chronoq")]
            assert fetches <= 4, fetches  # 1 s, 2 s, 4 s apart (it retried every second)
            tracebacks = [r for r in during if r.exc_info]
            assert len(tracebacks) <= 3, [r.getMessage() for r in tracebacks]
            assert len(during) <= 15, [r.getMessage() for r in during]

            await proxy.start()
            with bus.subscribe() as events:
                deadline = time.monotonic() + 20
                while not events.queue.qsize():
                    assert time.monotonic() < deadline, "the event bridge did not recover"
                    direct.publish([TaskEvent("t2", "x", queue, "queued", 0, time.time())])
                    await broker.fetch(1, 0.2)
                    await asyncio.sleep(0.2)
            deadline = time.monotonic() + 10
            while "reading from Redis works again" not in caplog.text:
                assert time.monotonic() < deadline, "the broker did not recover"
                await broker.fetch(1, 0.2)
        finally:
            await broker.close()
            await asyncio.gather(bus.close(), direct.close())
            await proxy.cut()
