"""Scheduler leadership: one leader at a time, takeover after its lease ends, stale writes
fenced off. In-process on both databases, and with real processes killed with -9."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from chronoq import App
from chronoq.models import ScheduleCreate
from chronoq.partitions import PARTITIONS, lease_name, partition_of
from chronoq.scheduler import LEASE, Scheduler
from chronoq.store.leases import NotLeader
from tests.conftest import Harness
from tests.processes import Proc
from tests.waiting import until


async def test_one_lease_holder_and_takeover_bumps_the_token(harness: Harness) -> None:
    store = harness.store
    now = time.time()
    a = await store.leases.try_take(LEASE, "a", now, ttl=1.0)
    assert a is not None and a.token == 1
    assert await store.leases.try_take(LEASE, "b", now + 0.5, ttl=1.0) is None
    renewed = await store.leases.try_take(LEASE, "a", now + 0.6, ttl=1.0)
    assert renewed == a  # renewing keeps the token
    b = await store.leases.try_take(LEASE, "b", now + 2.0, ttl=1.0)
    assert b is not None and b.token == 2
    # the stale leader's writes are refused, in the same transaction as the write
    with pytest.raises(NotLeader):
        await store.promote_due(now + 2.1, fence=a)
    with pytest.raises(NotLeader):
        await store.schedules.fire_due(now + 2.1, fence=a)
    assert await store.promote_due(now + 2.1, fence=b) == []
    await store.leases.release(b)
    c = await store.leases.try_take(LEASE, "c", now + 2.2, ttl=1.0)
    assert c is not None and c.token == 3


async def test_schedulers_share_the_partitions_and_each_fires_its_own(
    app: App, harness: Harness
) -> None:
    store = harness.store
    now = time.time()
    for n in range(40):
        await store.schedules.create(
            ScheduleCreate.model_validate(
                {"name": f"tick-{n}", "cron": "* * * * * *", "task": {"name": "noop"}}
            ),
            now,
        )
    first = Scheduler(store, poll_seconds=0.1, lease_ttl=1.5, scheduler_id="first")
    second = Scheduler(store, poll_seconds=0.1, lease_ttl=1.5, scheduler_id="second")
    jobs = [asyncio.create_task(first.run())]

    async def held(scheduler: Scheduler, n: int) -> bool:
        return len(scheduler.ownership.fences) == n

    await until(lambda: held(first, PARTITIONS), "the first took not all partitions", timeout=5)
    jobs.append(asyncio.create_task(second.run()))
    half = PARTITIONS // 2
    await until(lambda: held(second, half), "the second got no half share", timeout=10)
    await until(lambda: held(first, half), "the first kept more than its share", timeout=10)
    assert not set(first.ownership.fences) & set(second.ownership.fences)
    assert first.leading and not second.leading  # promotion and reaping: the leader only
    # the column the database computes is the partition Python computes
    async with store.conn() as c:
        rows = await c.fetch("SELECT id, part FROM schedules")
    assert [r["part"] for r in rows] == [partition_of(r["id"]) for r in rows]
    ours = {sid: partition_of(sid) for sid in (r["id"] for r in rows)}
    fired_first, fired_second = first.fired, second.fired

    async def both_fired() -> bool:
        return first.fired > fired_first + 2 and second.fired > fired_second + 2

    await until(both_fired, "the two schedulers did not both fire", timeout=10)
    first.stop()  # a graceful stop hands its partitions back: the second takes them all
    await jobs[0]
    await until(lambda: held(second, PARTITIONS), "the second took over no partitions", timeout=5)
    await until(lambda: asyncio.sleep(0, second.leading), "the second never led", timeout=5)
    second.stop()
    await jobs[1]
    tasks = await store.list_tasks(limit=10_000)
    keys = [(t.schedule_id, t.slot) for t in tasks]
    assert len(keys) == len(set(keys)), "a slot fired twice"
    assert {ours[t.schedule_id] for t in tasks if t.schedule_id} <= set(range(PARTITIONS))


async def test_a_stale_partition_owner_cannot_fire(harness: Harness) -> None:
    store = harness.store
    now = time.time()
    record = await store.schedules.create(
        ScheduleCreate.model_validate(
            {"name": "tick", "cron": "* * * * * *", "task": {"name": "noop"}}
        ),
        now,
    )
    name = lease_name(partition_of(record.id))
    (old,) = await store.leases.try_take_many([name], "old", now, 1.0)
    (new,) = await store.leases.try_take_many([name], "new", now + 2.0, 1.0)
    assert new.token == old.token + 1
    with pytest.raises(NotLeader):
        await store.schedules.fire_due(now + 2.5, owned=[old])
    assert await store.schedules.fire_due(now + 2.5, owned=[new]) >= 1
    assert await store.schedules.fire_due(now + 2.5, owned=[]) == 0


def _leader_pid(db_url: str, wait: float = 10.0) -> int:
    """The pid of the scheduler holding a valid lease (waiting up to ``wait`` s for one)."""

    async def read() -> int | None:
        async with App(db_url) as app:
            lease = await app.store.leases.get(LEASE)
            if lease is None or lease.expires_at <= time.time():
                return None
            return int(lease.holder.split(":")[1])

    deadline = time.monotonic() + wait
    while (pid := asyncio.run(read())) is None:
        assert time.monotonic() < deadline, "no scheduler holds the lease"
        time.sleep(0.1)
    return pid


def test_killed_leader_is_replaced_and_no_slot_fires_twice(db_url: str, tmp_path: Path) -> None:
    async def setup() -> None:
        async with App(db_url) as app:
            await app.store.schedules.create(
                ScheduleCreate.model_validate(
                    {
                        "name": "tick",
                        "cron": "* * * * * *",
                        "task": {"name": "noop"},
                        "misfire_policy": "catch_up",
                        "max_catch_up": 100,
                    }
                ),
                time.time(),
            )

    async def slots() -> list[float]:
        async with App(db_url) as app:
            schedule = await app.store.schedules.get("tick")
            tasks = await app.store.list_tasks(schedule_id=schedule.id, limit=1000)
            return sorted(t.slot for t in tasks if t.slot is not None)

    asyncio.run(setup())
    env = {"CHRONOQ_DATABASE_URL": db_url, "CHRONOQ_POLL_SECONDS": "0.1"}
    procs = [Proc(["scheduler"], env, tmp_path / f"s{n}.log") for n in range(3)]
    try:
        time.sleep(2.5)
        leader = _leader_pid(db_url)
        assert leader in {p.popen.pid for p in procs}
        killed_at = time.time()
        os.kill(leader, signal.SIGKILL)
        deadline = time.monotonic() + 15
        new_leader = leader
        while time.monotonic() < deadline:
            new_leader = _leader_pid(db_url, wait=15)
            if new_leader != leader:
                break
            time.sleep(0.2)
        failover = time.time() - killed_at
        assert new_leader != leader, "no scheduler took over"
        assert failover < 10, failover
        time.sleep(2)
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.terminate()
    fired = asyncio.run(slots())
    assert len(fired) == len(set(fired)), "a slot fired twice"
    # catch_up: the slots of the failover gap were fired by the new leader
    gaps = [b - a for a, b in itertools.pairwise(fired)]
    assert set(gaps) == {1.0}, gaps
