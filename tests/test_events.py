"""The event bus: WebSocket stream from a real server, and the Redis bridge between processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chronoq.api.replay import BadCursor, EventLog, Position
from chronoq.events import EventBus, LogEvent, ProgressEvent, TaskEvent, WorkerEvent
from tests.processes import Proc, cli, free_port, wait_ready, wait_status
from tests.test_auth import bearer_protocol

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


@contextmanager
def demo_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``chronoq dev --demo`` on a fresh SQLite file: its URL and port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = Proc(
        ["dev", "--demo", "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'ev.db'}"],
        {},
        tmp_path / "dev.log",
    )
    try:
        wait_ready(url, dev)
        yield url, port
    finally:
        assert dev.terminate() == 0


def test_websocket_streams_task_lifecycle(tmp_path: Path) -> None:
    with demo_server(tmp_path) as (url, port):
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


@pytest.fixture
async def buses() -> AsyncIterator[tuple[EventBus, EventBus]]:
    """Two buses (as in two processes) bridged through Redis."""
    sender, receiver = EventBus(REDIS_URL), EventBus(REDIS_URL)
    await sender.start()
    await receiver.start()
    for bus in (sender, receiver):  # subscribed: Redis drops what nobody hears yet
        await asyncio.wait_for(bus.listening.wait(), 10)
    yield sender, receiver
    await sender.close()
    await receiver.close()


async def test_redis_bridge_delivers_between_buses(buses: tuple[EventBus, EventBus]) -> None:
    sender, receiver = buses
    with receiver.subscribe() as subscription, sender.subscribe() as own:
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
        event = WorkerEvent("w1", "child_restarted", time.time(), slot=1, pid=42, signal="SIGSEGV")
        sender.publish_workers([event])
        [got] = await asyncio.wait_for(anext(workers), 5)
        assert abs(got.at - event.at) < 1e-5
        got.at = event.at
        assert got == event and got.to_wire()["type"] == "worker"
        await asyncio.sleep(0.3)
        assert tasks.queue.empty(), "task subscribers must not get worker events"


async def test_progress_events_cross_the_redis_bridge_on_their_own_feed(
    buses: tuple[EventBus, EventBus],
) -> None:
    sender, receiver = buses
    with receiver.subscribe_progress() as steps, receiver.subscribe_workers() as workers:
        assert sender.progress_active  # a Redis bridge may have listeners elsewhere
        event = ProgressEvent("t1", "job", "default", 2, time.time(), 0.4, "step 2 of 5", "w1")
        sender.publish_progress([event])
        [got] = await asyncio.wait_for(anext(steps), 5)
        got.at = event.at
        assert got == event and got.to_wire()["type"] == "progress"
        await asyncio.sleep(0.3)
        assert workers.queue.empty(), "worker subscribers must not get progress events"


async def test_log_events_cross_the_redis_bridge_on_their_own_feed(
    buses: tuple[EventBus, EventBus],
) -> None:
    sender, receiver = buses
    with receiver.subscribe_logs() as logs, receiver.subscribe_progress() as steps:
        assert sender.logs_active  # a Redis bridge may have listeners elsewhere
        now = time.time()
        lines = [(now - 0.1, "log", "INFO app: one"), (now, "stdout", "two ✓")]
        event = LogEvent("t1", "job", "default", 2, 3, now, lines, "w1", "alpha")
        sender.publish_logs([event])
        [got] = await asyncio.wait_for(anext(logs), 5)
        # times cross as ISO 8601 with microseconds: equal to within one, not to the digit
        assert [(s, t) for _, s, t in got.lines] == [(s, t) for _, s, t in lines]
        assert all(
            abs(a - b) < 2e-6 for (a, _, _), (b, _, _) in zip(got.lines, lines, strict=True)
        ), (got.lines, lines)
        got.at, got.lines = event.at, lines
        assert got == event
        wire = event.to_wire()
        assert wire["type"] == "log" and wire["lines"][1] == {
            "at": wire["at"],
            "stream": "stdout",
            "text": "two ✓",
        }
        await asyncio.sleep(0.3)
        assert steps.queue.empty(), "progress subscribers must not get log events"


async def test_close_returns_while_an_event_is_being_sent() -> None:
    """A cancel that lands inside redis-py's PUBLISH used to be swallowed, leaving close()
    (and so a process's shutdown) waiting forever; one in about eight closes hit it."""
    for round_ in range(40):
        bus = EventBus(REDIS_URL)
        await bus.start()
        await asyncio.sleep(0.02)
        bus.publish([TaskEvent("t1", "job", "default", "succeeded", 1, time.time())])
        await asyncio.sleep(round_ * 0.0002)  # land the close at different points of the send
        await asyncio.wait_for(bus.close(), 5)


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


def test_log_lines_cross_processes_through_redis_while_the_task_runs(
    pg_url: str, tmp_path: Path
) -> None:
    """A worker in one process, the API in another: a handler's lines reach the API's
    ``types=log`` socket while the handler still runs, through Redis."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "CHRONOQ_REDIS_URL": REDIS_URL,
        "CHRONOQ_AUTH": "0",
        "CHRONOQ_APP": "tests.apps.journal:app",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    api = Proc(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = Proc(["worker"], env, tmp_path / "worker.log")
    try:
        wait_ready(url, api)
        with connect(f"ws://127.0.0.1:{port}/v1/events?types=log&name=journal.steps") as ws:
            task = httpx.post(
                f"{url}/v1/tasks",
                json={"name": "journal.steps", "payload": {"steps": 40, "pause": 0.25}},
            ).json()
            texts: list[str] = []
            deadline = time.monotonic() + 30
            while "job printed 2" not in texts:
                assert time.monotonic() < deadline, f"no second step pushed; saw {texts}"
                for event in json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))):
                    assert (event["type"], event["task_id"]) == ("log", task["id"])
                    texts += [line["text"] for line in event["lines"]]
            # heard while it runs (40 steps take 10 s), from the worker's process
            assert httpx.get(f"{url}/v1/tasks/{task['id']}").json()["status"] == "running"
            assert texts[:2] == ["INFO tests.journal: job step 1 of 40", "job printed 1"]
    finally:
        for proc in (worker, api):
            proc.terminate()


@pytest.mark.parametrize("filters", [{"task_id": "nope"}, {"queue": "elsewhere"}])
def test_websocket_filters(tmp_path: Path, filters: dict[str, str]) -> None:
    with demo_server(tmp_path) as (url, port):
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        with connect(f"ws://127.0.0.1:{port}/v1/events?{query}") as ws:
            httpx.post(f"{url}/v1/tasks", json={"name": "demo.add", "payload": {"a": 1, "b": 2}})
            with pytest.raises(TimeoutError):
                ws.recv(timeout=1.0)


# -- resume: ?since=<cursor> ------------------------------------------------------------------
def _seq(cursor: str) -> int:
    return int(cursor.rsplit("-", 1)[1])


def test_a_reconnecting_client_gets_every_missed_event_exactly_once(tmp_path: Path) -> None:
    with demo_server(tmp_path) as (url, port):
        with connect(f"ws://127.0.0.1:{port}/v1/events?since=latest") as ws:
            [hello] = json.loads(ws.recv(timeout=5))
            assert hello["type"] == "stream" and hello["reset"] is False
            first = httpx.post(
                f"{url}/v1/tasks", json={"name": "demo.add", "payload": {"a": 1, "b": 1}}
            )
            seen = collect(ws, first.json()["id"], "succeeded")
            assert all(_seq(e["cursor"]) > _seq(hello["cursor"]) for e in seen)
        cursor = seen[-1]["cursor"]
        # while no socket is open: 20 tasks run to the end
        missed = [
            httpx.post(
                f"{url}/v1/tasks", json={"name": "demo.add", "payload": {"a": i, "b": 0}}
            ).json()["id"]
            for i in range(20)
        ]
        for task_id in missed:
            wait_status(url, task_id, "succeeded")
        with connect(f"ws://127.0.0.1:{port}/v1/events?since={cursor}") as ws:
            [hello] = json.loads(ws.recv(timeout=5))
            assert hello == {"type": "stream", "cursor": cursor, "reset": False}
            replayed: list[dict[str, Any]] = []
            while {e["task_id"] for e in replayed if e["status"] == "succeeded"} < set(missed):
                replayed += json.loads(ws.recv(timeout=5))
            with pytest.raises(TimeoutError):  # and what else the demo did meanwhile
                while True:
                    replayed += json.loads(ws.recv(timeout=0.5))
        numbers = [_seq(e["cursor"]) for e in replayed]
        assert numbers == list(range(_seq(cursor) + 1, _seq(cursor) + 1 + len(numbers)))
        mine = [(e["task_id"], e["status"]) for e in replayed if e["task_id"] in missed]
        assert sorted(mine) == sorted(
            (t, s) for t in missed for s in ("queued", "running", "succeeded")
        )  # each lifecycle event once: none lost, none twice

        # a cursor of another server (or of before a restart): reset, then live
        other = "0123456789ab-5"
        with connect(f"ws://127.0.0.1:{port}/v1/events?since={other}") as ws:
            [hello] = json.loads(ws.recv(timeout=5))
            assert hello["reset"] is True and "restarted" in hello["reason"]
            assert _seq(hello["cursor"]) >= numbers[-1]
        for bad in ("yesterday", f"{cursor[:13]}99999999"):  # not a cursor; ahead of the log
            with connect(f"ws://127.0.0.1:{port}/v1/events?since={bad}") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4422


async def test_the_event_log_resets_cursors_it_can_no_longer_honour() -> None:
    bus = EventBus()
    log = EventLog(bus, keep=10)
    log.attach()
    try:

        async def publish(n: int) -> None:
            target = log.last + n
            bus.publish(TaskEvent(f"t{i}", "job", "default", "queued", 0, 0.0) for i in range(n))
            await asyncio.wait_for(log.wait(target - 1, log.id), 5)

        await publish(5)
        assert log.position("latest") == Position(5)
        assert log.after(2) == (log.events[2:5], 5)
        await publish(30)  # the ring trims to the last `keep` events
        assert log.first > 1 and log.last == 35 and len(log.events) >= 10
        assert log.position(log.cursor(2)).reset  # older than what is kept
        assert log.after(2) is None
        assert log.position(log.cursor(34)) == Position(34)
        with pytest.raises(BadCursor):
            log.position(log.cursor(36))
        assert log.subscription is not None
        log.subscription.dropped += 1  # the bus dropped events: earlier cursors may miss some
        await publish(1)
        assert log.position(log.cursor(35)).reset and not log.position(log.cursor(36)).reset
        log.detach()
        assert log.running  # kept a while for clients that come back
    finally:
        old = log.id
        log.stop()
    assert not log.running and log.id != old
    assert log.position(f"{old}-30").reset


def test_a_replay_holds_only_the_key_s_namespace(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{tmp_path / 'ns.db'}"
    keys = {}
    for ns in ("alpha", "beta"):
        made = cli(
            "keys", "create", ns, "--scope", "write", "--namespace", ns, "--database-url", db
        )
        assert made.returncode == 0, made.stderr
        keys[ns] = made.stdout.strip()
    dev = Proc(["dev", "--demo", "--auth", "--port", str(port), "--database-url", db], {},
               tmp_path / "dev.log")  # fmt: skip
    try:
        wait_ready(url, dev)
        events = f"ws://127.0.0.1:{port}/v1/events"
        alpha = bearer_protocol(keys["alpha"])
        with connect(f"{events}?since=latest", subprotocols=alpha) as ws:
            [hello] = json.loads(ws.recv(timeout=5))
        submitted = {
            ns: httpx.post(
                f"{url}/v1/tasks",
                json={"name": "demo.add", "payload": {"a": 1, "b": 1}},
                headers={"authorization": f"Bearer {keys[ns]}"},
            ).json()["id"]
            for ns in ("alpha", "beta")
        }
        for ns, task_id in submitted.items():
            deadline = time.monotonic() + 20
            auth = {"authorization": f"Bearer {keys[ns]}"}
            while httpx.get(f"{url}/v1/tasks/{task_id}", headers=auth).json()["status"] != (
                "succeeded"
            ):
                assert time.monotonic() < deadline, task_id
                time.sleep(0.05)
        with connect(f"{events}?since={hello['cursor']}", subprotocols=alpha) as ws:
            assert json.loads(ws.recv(timeout=5))[0]["reset"] is False
            got: list[dict[str, Any]] = []
            with pytest.raises(TimeoutError):
                while True:
                    got += json.loads(ws.recv(timeout=1))
        assert {e["namespace"] for e in got} == {"alpha"}
        assert [e["status"] for e in got if e["task_id"] == submitted["alpha"]] == [
            "queued",
            "running",
            "succeeded",
        ]
    finally:
        assert dev.terminate() == 0
