"""The event bus: WebSocket stream from a real server, and the Redis bridge between processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from chronoq.events import EventBus, TaskEvent, WorkerEvent
from tests.processes import Proc, cli, free_port, wait_ready

REDIS_URL = "redis://127.0.0.1:6379/0"


def collect(ws: Any, task_id: str, until: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Events of ``task_id`` from the socket until one has status ``until``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))):
            if event["task_id"] == task_id:
                seen.append(event)
                if event["status"] == until:
                    return seen
    raise AssertionError(f"no {until} event for {task_id}; saw {seen}")


def test_websocket_streams_task_lifecycle(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = Proc(
        ["dev", "--demo", "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'ev.db'}"],
        {},
        tmp_path / "dev.log",
    )
    try:
        wait_ready(url, dev)
        with connect(f"ws://127.0.0.1:{port}/v1/events?name=demo.flaky") as ws:
            task = httpx.post(
                f"{url}/v1/tasks",
                json={
                    "name": "demo.flaky",
                    "payload": {"succeed_on_attempt": 2},
                    "backoff": {"base": 0.2, "jitter": 0},
                },
            ).json()
            events = collect(ws, task["id"], "succeeded")
        statuses = [e["status"] for e in events]
        assert statuses == ["queued", "running", "failed", "queued", "running", "succeeded"]
        assert [e["attempt"] for e in events if e["status"] == "running"] == [1, 2]
        assert events[2]["error"] and events[-1]["duration"] >= 0
        assert all(e["name"] == "demo.flaky" for e in events)
    finally:
        assert dev.terminate() == 0


@pytest.fixture
async def buses() -> AsyncIterator[tuple[EventBus, EventBus]]:
    """Two buses (as in two processes) bridged through Redis."""
    sender, receiver = EventBus(REDIS_URL), EventBus(REDIS_URL)
    await sender.start()
    await receiver.start()
    yield sender, receiver
    await sender.close()
    await receiver.close()


async def test_redis_bridge_delivers_between_buses(buses: tuple[EventBus, EventBus]) -> None:
    sender, receiver = buses
    with receiver.subscribe() as subscription, sender.subscribe() as own:
        await asyncio.sleep(0.3)  # let the pub/sub subscription settle
        event = TaskEvent("t1", "job", "default", "running", 1, time.time(), wait=0.01)
        sender.publish([event])
        [got] = await asyncio.wait_for(anext(subscription), 5)
        assert abs(got.at - event.at) < 1e-5  # ISO 8601 on the wire: microseconds
        got.at = event.at
        assert got == event
        assert (await asyncio.wait_for(anext(own), 1)) == [event]  # local delivery too
        await asyncio.sleep(0.3)
        assert own.queue.empty(), "a bus must not receive its own events back from Redis"


async def test_worker_events_cross_the_redis_bridge_on_their_own_feed(
    buses: tuple[EventBus, EventBus],
) -> None:
    sender, receiver = buses
    with receiver.subscribe_workers() as workers, receiver.subscribe() as tasks:
        await asyncio.sleep(0.3)  # let the pub/sub subscription settle
        event = WorkerEvent("w1", "child_restarted", time.time(), slot=1, pid=42, signal="SIGSEGV")
        sender.publish_workers([event])
        [got] = await asyncio.wait_for(anext(workers), 5)
        assert abs(got.at - event.at) < 1e-5
        got.at = event.at
        assert got == event and got.to_wire()["type"] == "worker"
        await asyncio.sleep(0.3)
        assert tasks.queue.empty(), "task subscribers must not get worker events"


def test_events_cross_processes_through_redis(pg_url: str, tmp_path: Path) -> None:
    """A worker in one process, the API in another: the API's WebSocket still sees the
    worker's events, through Redis."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "CHRONOQ_REDIS_URL": REDIS_URL,
        "CHRONOQ_AUTH": "0",
        "CHRONOQ_APP": "tests.apps.recorder:app",
        "RECORD_FILE": str(tmp_path / "r.txt"),
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    api = Proc(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = Proc(["worker"], env, tmp_path / "worker.log")
    try:
        wait_ready(url, api)
        time.sleep(1)
        with connect(f"ws://127.0.0.1:{port}/v1/events") as ws:
            task = httpx.post(f"{url}/v1/tasks", json={"name": "record"}).json()
            events = collect(ws, task["id"], "succeeded")
        assert [e["status"] for e in events] == ["queued", "running", "succeeded"]
    finally:
        for proc in (worker, api):
            proc.terminate()


@pytest.mark.parametrize("filters", [{"task_id": "nope"}, {"queue": "elsewhere"}])
def test_websocket_filters(tmp_path: Path, filters: dict[str, str]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = Proc(
        ["dev", "--demo", "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'f.db'}"],
        {},
        tmp_path / "dev.log",
    )
    try:
        wait_ready(url, dev)
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        with connect(f"ws://127.0.0.1:{port}/v1/events?{query}") as ws:
            httpx.post(f"{url}/v1/tasks", json={"name": "demo.add", "payload": {"a": 1, "b": 2}})
            with pytest.raises(TimeoutError):
                ws.recv(timeout=1.0)
    finally:
        dev.terminate()
