"""PostgreSQL-only behaviour: cross-process wake-ups survive a lost LISTEN connection."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store import Completion, TaskRecord
from chronoq.store.postgres import CUSTOM_PLAN_ROWS, PostgresStore
from tests.conftest import PG_URL


async def test_listen_connection_is_restored_after_it_is_killed(pg_url: str) -> None:
    listener = PostgresStore(pg_url)
    writer = PostgresStore(pg_url, listen=False)
    await listener.open()
    await listener.migrate()
    await writer.open()
    try:
        assert listener.listener_pid is None  # nobody in this process needs wake-ups yet
        woken = listener.hub.schedule_event()
        ready = listener.hub.ready_event(["default"])
        deadline = time.monotonic() + 5
        while listener.listener_pid is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        old_pid = listener.listener_pid
        admin = await asyncpg.connect(PG_URL)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        deadline = time.monotonic() + 5
        while listener.listener_pid in (old_pid, None) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert listener.listener_pid not in (old_pid, None), "LISTEN was not restored"

        await asyncio.sleep(0.1)
        woken.clear()
        ready.clear()
        await writer.create_task(TaskCreate(name="x", delay_seconds=60), time.time())
        await asyncio.wait_for(woken.wait(), 2)  # the other process's INSERT woke us
        await writer.create_task(TaskCreate(name="x"), time.time())
        await asyncio.wait_for(ready.wait(), 2)
    finally:
        await writer.close()
        await listener.close()


async def test_each_process_hears_only_the_wake_ups_it_needs(pg_url: str) -> None:
    """A submission wakes workers of its queue, not schedulers or other queues' workers; a
    scheduled task wakes schedulers, not workers. Clients that only submit never LISTEN."""
    stores = [PostgresStore(pg_url) for _ in range(4)]
    scheduler, worker, other_queue, client = stores
    for store in stores:
        await store.open()
    await client.migrate()
    try:
        planned = scheduler.hub.schedule_event()
        ready = worker.hub.ready_event(["default"])
        elsewhere = other_queue.hub.ready_event(["other"])
        await asyncio.sleep(0.5)  # LISTENs done, and the wake-up that follows each
        assert client.listener_pid is None
        for event in (planned, ready, elsewhere):
            event.clear()
        await client.create_task(TaskCreate(name="now"), time.time())
        await asyncio.wait_for(ready.wait(), 2)
        await asyncio.sleep(0.3)
        assert not planned.is_set() and not elsewhere.is_set()
        ready.clear()
        await client.create_task(TaskCreate(name="later", delay_seconds=60), time.time())
        await asyncio.wait_for(planned.wait(), 2)
        await asyncio.sleep(0.3)
        assert not ready.is_set() and not elsewhere.is_set()
    finally:
        for store in stores:
            await store.close()


async def test_the_group_commit_connection_survives_a_dropped_backend_and_a_cancel(
    pg_url: str,
) -> None:
    """Submissions keep one pooled connection of their own: when the server drops it, or a
    caller is cancelled in the middle of its write, the next submission takes a new one."""
    store = PostgresStore(pg_url, listen=False)
    await store.open()
    await store.migrate()
    admin = await asyncpg.connect(PG_URL)
    try:
        first, _ = await store.create_task(TaskCreate(name="a"), time.time())
        old_pid = store._inserter.get_server_pid()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        await asyncio.sleep(0.2)
        second, _ = await store.create_task(TaskCreate(name="b"), time.time())
        assert store._inserter.get_server_pid() != old_pid
        cut = asyncio.create_task(store.create_task(TaskCreate(name="c"), time.time()))
        while not store._inserting:  # noqa: ASYNC110 - wait until its statement is out
            await asyncio.sleep(0)
        cut.cancel()
        await asyncio.gather(cut, return_exceptions=True)
        third, _ = await store.create_task(TaskCreate(name="d"), time.time())
        for task in (first, second, third):
            assert (await store.get_task(task.id)).name == task.name
    finally:
        await admin.close()
        await store.close()


async def test_processes_opening_a_new_schema_at_once_all_get_in(pg_url: str) -> None:
    """Several processes starting together (a scheduler and its workers) all create the
    schema if it is missing: each must open and migrate, not lose a race on pg_namespace."""
    stores = [PostgresStore(pg_url, min_size=1, max_size=1, listen=False) for _ in range(8)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.migrate() for s in stores))
        versions = {version for version, _, _ in stores[0].migrations()}
        for store in stores:
            assert await store.applied_migrations() == versions
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_large_batch_of_results_is_recorded_whole(pg_url: str) -> None:
    """A batch of :data:`CUSTOM_PLAN_ROWS` results or more is written in a transaction
    planned for itself (the cached plan can be quadratic in the batch): every task row and
    attempt of it is recorded, as in a small batch, and a stale report changes nothing."""
    store = PostgresStore(pg_url)
    await store.open()
    await store.migrate()
    try:
        n = CUSTOM_PLAN_ROWS + 22
        now = time.time()
        await store.create_tasks([TaskCreate(name="x") for _ in range(n)], now)
        claimed: list[TaskRecord] = []
        while len(claimed) < n:
            claimed += await store.claim("w", "default", n - len(claimed), now, 60.0)
        done = [Completion.success(t, time.time(), {"i": i}) for i, t in enumerate(claimed)]
        await store.complete(done)
        await store.complete(done[:5])  # again: those attempts are closed already
        for i, task in enumerate(claimed):
            record = await store.get_task(task.id)
            assert (record.status, record.result) == (Status.SUCCEEDED, {"i": i})
            (attempt,) = await store.get_attempts(task.id)
            assert attempt.finished_at is not None and attempt.outcome == "succeeded"
    finally:
        await store.close()
