"""PostgreSQL hand-offs: a task submitted to an idle worker is inserted straight into its
hands (running, attempt open) and started on the notification, without a claim."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chronoq.executors import PythonExecutor
from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store.base import _submitted
from chronoq.store.postgres import _HANDOFF, PostgresStore
from chronoq.worker import Worker
from tests.conftest import PG_URL
from tests.processes import Proc, cli


class Setup:
    """A worker process's store and a client process's store on one schema."""

    def __init__(self, url: str) -> None:
        self.worker_store = PostgresStore(url)
        self.client = PostgresStore(url, listen=False)
        self.payloads: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.jobs: list[tuple[Worker, asyncio.Task[None]]] = []

    async def record(self, **payload: Any) -> int:
        self.payloads.append(payload)
        return len(self.payloads)

    async def block(self) -> None:
        await self.release.wait()

    async def start_worker(self, concurrency: int = 2) -> Worker:
        worker = Worker(
            self.worker_store,
            {"record": PythonExecutor(self.record), "block": PythonExecutor(self.block)},
            concurrency=concurrency,
            lease_seconds=3,
            heartbeat_seconds=0.3,
        )
        self.jobs.append((worker, asyncio.create_task(worker.run(drain_seconds=2))))
        await self.wait(lambda: self.offers(worker.id), "the worker never offered its slots")
        return worker

    async def offers(self, worker_id: str) -> int:
        async with self.client.conn() as c:
            rows = await c.fetch("SELECT slots FROM offers WHERE worker_id = $1", worker_id)
        return sum(r["slots"] for r in rows)

    async def submit(self, **spec: Any) -> Any:
        record, _ = await self.client.create_task(TaskCreate(**spec), time.time())
        return record

    async def finished(self, task_id: str) -> Any:
        await self.wait(lambda: self._done(task_id), f"task {task_id} did not finish")
        return await self.client.get_task(task_id)

    async def _done(self, task_id: str) -> bool:
        return (await self.client.get_task(task_id)).status is Status.SUCCEEDED

    @staticmethod
    async def wait(check: Any, why: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            assert time.monotonic() < deadline, why
            await asyncio.sleep(0.02)


@pytest.fixture
async def setup(pg_url: str) -> AsyncIterator[Setup]:
    s = Setup(pg_url)
    await s.worker_store.open()
    await s.worker_store.migrate()
    await s.client.open()
    try:
        yield s
    finally:
        s.release.set()
        for worker, job in s.jobs:
            worker.stop()
            await job
        await s.client.close()
        await s.worker_store.close()


async def test_an_idle_worker_is_handed_a_new_task_and_takes_its_offer_back(setup: Setup) -> None:
    worker = await setup.start_worker(concurrency=2)
    task = await setup.submit(name="record", payload={"n": 1})
    assert task.status is Status.RUNNING and task.worker_id == worker.id
    assert task.attempts == 1 and task.lease_expires_at is not None
    done = await setup.finished(task.id)
    assert done.result == 1 and setup.payloads == [{"n": 1}]
    history = await setup.client.get_attempts(task.id)
    assert [(a.attempt, a.worker_id, a.outcome) for a in history] == [(1, worker.id, "succeeded")]
    worker.stop()
    await setup.jobs.pop()[1]
    assert await setup.offers(worker.id) == 0
    assert (await setup.submit(name="record")).status is Status.QUEUED  # nobody offers now


async def test_a_busy_worker_is_handed_no_more_than_its_free_slots(setup: Setup) -> None:
    await setup.start_worker(concurrency=1)
    first = await setup.submit(name="block")
    second = await setup.submit(name="record")
    assert first.status is Status.RUNNING
    assert second.status is Status.QUEUED  # the one slot is taken: it waits its turn
    setup.release.set()
    assert (await setup.finished(second.id)).attempts == 1
    await setup.finished(first.id)


async def test_an_offer_whose_listener_is_gone_is_never_taken(setup: Setup) -> None:
    doomed = await asyncpg.connect(PG_URL)
    dead_pid = doomed.get_server_pid()
    await doomed.close()
    async with setup.client.conn() as c:
        await c.execute("INSERT INTO offers VALUES ('ghost', '{default}', 8, 30, $1)", dead_pid)
    task = await setup.submit(name="record")
    assert task.status is Status.QUEUED and task.worker_id is None
    worker = await setup.start_worker()  # a live worker claims it the usual way
    assert (await setup.finished(task.id)).attempts == 1
    assert (await setup.client.get_attempts(task.id))[0].worker_id == worker.id


async def test_a_row_too_long_for_a_notification_is_handed_by_id(setup: Setup) -> None:
    await setup.start_worker()
    text = "x" * 9000  # NOTIFY payloads stop at 8,000 bytes
    task = await setup.submit(name="record", payload={"text": text})
    assert task.status is Status.RUNNING
    await setup.finished(task.id)
    assert setup.payloads == [{"text": text}]


async def test_a_repeated_key_returns_the_task_it_made_and_runs_once(setup: Setup) -> None:
    await setup.start_worker()
    first = await setup.submit(name="record", idempotency_key="k1")
    record, created = await setup.client.create_task(
        TaskCreate(name="record", idempotency_key="k1"), time.time()
    )
    assert not created and record.id == first.id
    await setup.finished(first.id)
    await asyncio.sleep(0.2)
    assert len(setup.payloads) == 1


async def test_each_completion_gives_its_slot_back(setup: Setup) -> None:
    worker = await setup.start_worker(concurrency=1)
    for n in range(3):  # one slot, handed three times in a row: each end frees it again
        task = await setup.submit(name="record", payload={"n": n})
        assert task.status is Status.RUNNING, f"submission {n} was not handed off"
        await setup.finished(task.id)
        await setup.wait(lambda: setup.offers(worker.id), "the slot never came back")


async def test_a_hand_off_beyond_the_free_slots_waits_for_one(setup: Setup) -> None:
    """Offers can lag behind a worker's slots: what it is handed beyond them is held (its
    lease renewed) and started when a slot frees, never run over the concurrency."""
    worker = await setup.start_worker(concurrency=1)
    blocker = await setup.submit(name="block")
    async with setup.client.conn() as c:
        await c.execute("UPDATE offers SET slots = 3")  # a stale count, as after a race
    extra = [await setup.submit(name="record", payload={"n": n}) for n in range(2)]
    assert all(t.status is Status.RUNNING for t in extra)
    held = worker.broker.held_ids
    await setup.wait(lambda: _true(len(held()) == 2), "the extra tasks were not held")
    assert list(worker.running) == [blocker.id] and sorted(held()) == sorted(t.id for t in extra)
    await asyncio.sleep(1.2)  # past a few heartbeats: held tasks keep their leases
    first = await setup.client.get_task(extra[0].id)
    assert first.lease_expires_at is not None and first.lease_expires_at > time.time() + 2
    setup.release.set()
    for task in extra:
        assert (await setup.finished(task.id)).attempts == 1
    assert setup.payloads == [{"n": 0}, {"n": 1}]


async def test_a_hand_off_whose_notification_was_lost_is_found_by_the_heartbeat(
    setup: Setup,
) -> None:
    """The hand-off commits but its notification never reaches the worker (say its LISTEN
    connection broke at that moment): the worker's heartbeat finds the task leased to it,
    unknown and unrenewed, and starts it, instead of leaving it to a lease expiry that would
    count a lost attempt."""
    worker = await setup.start_worker(concurrency=2)
    blocker = await setup.submit(name="block")  # runs across many heartbeats, known
    task = _submitted(TaskCreate(name="record", payload={"n": 7}), time.time(), "default")
    async with setup.client.tx() as c:  # the hand-off, without the trigger's notification
        await c.execute("SET LOCAL session_replication_role = replica")
        [handed] = await c.fetch(_HANDOFF, *task.values())
        await c.execute(
            "INSERT INTO attempts (task_id, attempt, worker_id, started_at) VALUES ($1, 1, $2, $3)",
            task.id,
            worker.id,
            task.updated_at,
        )
    assert handed["status"] == "running" and handed["worker_id"] == worker.id
    assert task.id not in worker.running
    done = await setup.finished(task.id)
    assert done.attempts == 1 and setup.payloads == [{"n": 7}]
    history = await setup.client.get_attempts(done.id)
    assert [(a.worker_id, a.outcome) for a in history] == [(worker.id, "succeeded")]
    await asyncio.sleep(1.0)  # more heartbeats: nothing known is taken for a stray
    assert setup.payloads == [{"n": 7}] and list(worker.running) == [blocker.id]
    setup.release.set()
    assert (await setup.finished(blocker.id)).attempts == 1


async def _true(value: bool) -> bool:
    return value


async def test_a_worker_killed_with_a_hand_off_loses_the_attempt_not_the_task(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """kill -9 a worker process that was handed a task: its offer is never taken again, the
    task's lease runs out and another worker runs it; nothing is lost or run twice after."""
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "RECORD_FILE": str(tmp_path / "record.txt"),
        "CHRONOQ_APP": "tests.apps.recorder:app",
        "CHRONOQ_LEASE_SECONDS": "2",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
        "CHRONOQ_LOG_LEVEL": "warning",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    client = PostgresStore(pg_url, listen=False)
    await client.open()
    try:
        procs.append(Proc(["scheduler"], env, tmp_path / "scheduler.log"))
        doomed = Proc(["worker", "--concurrency", "2"], env, tmp_path / "w1.log")
        procs.append(doomed)
        await Setup.wait(lambda: _offered(client), "the worker never offered its slots")
        spec = TaskCreate(name="record", payload={"sleep": 2.0}, max_attempts=3)
        handed, _ = await client.create_task(spec, time.time())
        assert handed.status is Status.RUNNING
        await Setup.wait(lambda: _true((tmp_path / "record.txt").exists()), "never started")
        doomed.kill()  # its LISTEN backend ends as the socket closes:
        await Setup.wait(lambda: _true_not(_offered(client)), "the offer stayed live")
        after, _ = await client.create_task(TaskCreate(name="record"), time.time())
        assert after.status is Status.QUEUED  # the dead worker's offer is not taken

        procs.append(Proc(["worker"], env, tmp_path / "w2.log"))
        for task_id in (after.id, handed.id):
            await Setup.wait(
                lambda t=task_id: _succeeded(client, t), f"{task_id} unfinished", timeout=20
            )
        history = await client.get_attempts(handed.id)
        assert [a.outcome for a in history] == ["lost", "succeeded"]
        lines = (tmp_path / "record.txt").read_text().splitlines()
        assert sorted(line.split()[0] for line in lines) == sorted([handed.id, handed.id, after.id])
    finally:
        await client.close()


async def _offered(store: PostgresStore) -> bool:
    """Some worker with a live LISTEN backend offers a slot."""
    async with store.conn() as c:
        return bool(
            await c.fetch(
                "SELECT 1 FROM offers WHERE slots > 0 "
                "AND EXISTS (SELECT 1 FROM pg_stat_get_activity(pid))"
            )
        )


async def _true_not(check: Any) -> bool:
    return not await check


async def _succeeded(store: PostgresStore, task_id: str) -> bool:
    return (await store.get_task(task_id)).status is Status.SUCCEEDED
