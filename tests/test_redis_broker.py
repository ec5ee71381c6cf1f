"""The Redis Streams broker with the real Redis and the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from chronoq import App, current_task
from chronoq.broker import Consumer
from chronoq.broker.redis import GROUP, RedisBroker, publish, stream
from chronoq.scheduler import Scheduler
from chronoq.worker import Worker
from tests.conftest import Harness, make_settings, running

BROKER_URL = "redis://127.0.0.1:6379/3"


@pytest.fixture
async def broker_app(db_url: str) -> AsyncIterator[App]:
    client = redis.from_url(BROKER_URL)
    await client.flushdb()
    await client.aclose()
    app = App(settings=make_settings(db_url, broker_url=BROKER_URL))
    yield app


@pytest.fixture
async def bh(broker_app: App) -> AsyncIterator[Harness]:
    async with running(broker_app) as harness:
        yield harness


def redis_worker(app: App, queue: str, **kwargs: Any) -> Worker:
    def make(consumer: Consumer) -> RedisBroker:
        return RedisBroker(
            BROKER_URL,
            consumer.store,
            consumer.worker_id,
            consumer.queues,
            consumer.lease_seconds,
            visibility_seconds=1.0,
        )

    return Worker(
        app.store, app.executors(), queues=[queue], poll_seconds=0.2, broker=make, **kwargs
    )


async def wait_all(
    harness: Harness, ids: list[str], status: str = "succeeded", timeout: float = 20
) -> None:
    for task_id in ids:
        await harness.wait_for(task_id, status, timeout=timeout)


async def test_tasks_flow_through_redis_streams_once(broker_app: App, bh: Harness) -> None:
    runs: dict[str, int] = {}

    @broker_app.task("count")
    async def count() -> str:
        ctx = current_task.get()
        runs[ctx.task_id] = runs.get(ctx.task_id, 0) + 1
        return ctx.worker_id

    queue = f"q{uuid.uuid4().hex[:8]}"
    workers = [redis_worker(broker_app, queue, concurrency=8) for _ in range(2)]
    jobs = [asyncio.create_task(w.run()) for w in workers]
    ids = [(await bh.submit(name="count", queue=queue))["id"] for _ in range(200)]
    await wait_all(bh, ids)
    for w in workers:
        w.stop()
    await asyncio.gather(*jobs)
    assert sorted(runs) == sorted(ids) and set(runs.values()) == {1}
    assert all(w.processed > 0 for w in workers)
    assert broker_app.publisher is not None and broker_app.publisher.published >= 200
    client = redis.from_url(BROKER_URL)
    assert await client.xlen(stream(queue, 0)) == 0  # acknowledged messages are deleted
    await client.aclose()


async def test_nothing_lost_when_redis_loses_everything(broker_app: App, bh: Harness) -> None:
    @broker_app.task("noop")
    def noop() -> None:
        return None

    queue = f"q{uuid.uuid4().hex[:8]}"
    ids = [(await bh.submit(name="noop", queue=queue))["id"] for _ in range(50)]
    await asyncio.sleep(0.3)
    client = redis.from_url(BROKER_URL)
    assert await client.xlen(stream(queue, 0)) == 50
    await client.flushdb()  # Redis restarted empty: streams and consumer groups are gone
    await client.aclose()
    publisher = broker_app.publisher
    assert publisher is not None
    scheduler = Scheduler(
        bh.store,
        poll_seconds=0.1,
        reconcile_seconds=0.3,
        reconcile=lambda: publisher.reconcile(bh.store, older_than=0.2),
    )
    sched_job = asyncio.create_task(scheduler.run())
    worker = redis_worker(broker_app, queue, concurrency=8)
    job = asyncio.create_task(worker.run())
    await wait_all(bh, ids)
    assert scheduler.republished >= 50
    worker.stop()
    scheduler.stop()
    await asyncio.gather(job, sched_job)


async def test_unacknowledged_messages_are_taken_over(broker_app: App, bh: Harness) -> None:
    @broker_app.task("noop")
    def noop() -> None:
        return None

    queue = f"q{uuid.uuid4().hex[:8]}"
    task = await bh.submit(name="noop", queue=queue)
    await asyncio.sleep(0.3)
    client = redis.from_url(BROKER_URL, decode_responses=True)
    name = stream(queue, 0)
    await client.xgroup_create(name, GROUP, id="0", mkstream=True)
    got: Any = await client.xreadgroup(GROUP, "crashed-consumer", {name: ">"}, count=10)
    assert got and got[0][1][0][1]["id"] == task["id"]  # taken, never claimed, never acked
    await client.aclose()
    started = time.monotonic()
    worker = redis_worker(broker_app, queue)
    job = asyncio.create_task(worker.run())
    await bh.wait_for(task["id"], "succeeded", timeout=10)
    assert time.monotonic() - started >= 0.9  # after the 1 s visibility timeout
    worker.stop()
    await job


async def test_high_priority_band_is_read_first(broker_app: App, bh: Harness) -> None:
    order: list[int] = []

    @broker_app.task("record")
    def record(p: int) -> None:
        order.append(p)

    queue = f"q{uuid.uuid4().hex[:8]}"
    for p in (-5, 0, 0, 7, 3):
        await bh.submit(name="record", queue=queue, priority=p, payload={"p": p})
    await asyncio.sleep(0.3)
    worker = redis_worker(broker_app, queue, concurrency=1)
    job = asyncio.create_task(worker.run())
    while len(order) < 5:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    worker.stop()
    await job
    assert order[:2] in ([7, 3], [3, 7]) and order[-1] == -5


async def test_duplicate_messages_never_run_a_task_twice(broker_app: App, bh: Harness) -> None:
    runs: list[str] = []

    @broker_app.task("once")
    def once() -> None:
        runs.append(current_task.get().task_id)

    queue = f"q{uuid.uuid4().hex[:8]}"
    task = await bh.submit(name="once", queue=queue)
    client = redis.from_url(BROKER_URL, decode_responses=True)
    await publish(client, [(task["id"], queue, 0)] * 5)
    await client.aclose()
    worker = redis_worker(broker_app, queue, concurrency=4)
    job = asyncio.create_task(worker.run())
    await bh.wait_for(task["id"], "succeeded")
    await asyncio.sleep(0.5)
    worker.stop()
    await job
    assert runs == [task["id"]]


async def test_app_with_publisher_closes_promptly_under_load(db_url: str) -> None:
    app = App(settings=make_settings(db_url, broker_url=BROKER_URL))

    @app.task("noop")
    def noop() -> None:
        return None

    await app.open()
    await asyncio.gather(*(noop.adelay() for _ in range(2000)))
    started = time.monotonic()
    await asyncio.wait_for(app.close(), 10)
    assert time.monotonic() - started < 6
