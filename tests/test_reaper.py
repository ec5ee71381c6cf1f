"""The reaper: a dead worker's tasks are retried apart, and a task whose attempts keep
dying (a poison task) is retried on its own, later, so it cannot take its neighbours down
again (issue 14)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from chronoq import states
from chronoq.store import Completion
from tests.conftest import Harness
from tests.processes import Proc

NO_JITTER = {"base": 1, "jitter": 0}  # the tasks' own backoff would give them one retry time


def test_after_death_spreads_and_quarantines_repeated_deaths() -> None:
    rng = random.Random(7)
    first = [states.after_death(1, rng) for _ in range(200)]
    assert min(first) >= 0 and max(first) < states.DEATH_SPREAD
    assert len(set(first)) == 200
    second = [states.after_death(2, rng) for _ in range(200)]
    assert min(second) >= states.QUARANTINE > max(first)
    assert states.after_death(3, rng) >= 2 * states.QUARANTINE
    assert states.after_death(50, rng) <= states.QUARANTINE_MAX + states.DEATH_SPREAD


async def _wait_until(
    harness: Harness, ids: list[str], status: str, timeout: float = 20
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = [await harness.get(i) for i in ids]
        if all(t["status"] == status for t in tasks):
            return tasks
        assert time.monotonic() < deadline, [(t["id"], t["status"]) for t in tasks]
        await asyncio.sleep(0.05)


def _worker(db_url: str, tmp_path: Path, n: int) -> Proc:
    env = {
        "CHRONOQ_DATABASE_URL": db_url,
        "CHRONOQ_APP": "tests.apps.recorder:app",
        "RECORD_FILE": str(tmp_path / "record.txt"),
        "CHRONOQ_LEASE_SECONDS": "2",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.3",
        "CHRONOQ_POLL_SECONDS": "0.1",
    }
    return Proc(["worker", "--concurrency", "8"], env, tmp_path / f"w{n}.log")


async def test_killed_worker_tasks_are_spread_and_a_repeat_victim_is_separated(
    db_url: str, harness: Harness, tmp_path: Path, procs: list[Proc]
) -> None:
    """kill -9 a worker holding 4 tasks: their retries come due at 4 different times.
    Run them again beside 3 fresh tasks and kill that worker too: the 4 whose attempts
    died twice come due 30 s after the 3 that died once."""
    harness.start_scheduler()
    first = [
        (
            await harness.submit(
                name="record", payload={"sleep": 60}, max_attempts=5, backoff=NO_JITTER
            )
        )["id"]
        for _ in range(4)
    ]
    worker = _worker(db_url, tmp_path, 1)
    procs.append(worker)
    await _wait_until(harness, first, "running")
    worker.kill()
    reaped = await _wait_until(harness, first, "failed")
    killed_at = time.time()
    run_at = sorted([(await harness.store.get_task(str(t["id"]))).run_at for t in reaped])
    assert len(set(run_at)) == 4, run_at  # without the spread: four equal retry times
    assert run_at[-1] - run_at[0] > 0.2, run_at
    assert all(r < killed_at + 1 + states.DEATH_SPREAD + 1 for r in run_at), run_at

    fresh = [
        (
            await harness.submit(
                name="record", payload={"sleep": 60}, max_attempts=5, backoff=NO_JITTER
            )
        )["id"]
        for _ in range(3)
    ]
    again = _worker(db_url, tmp_path, 2)
    procs.append(again)
    await _wait_until(harness, first + fresh, "running", timeout=30)
    again.kill()
    await _wait_until(harness, first + fresh, "failed")
    repeat = [await harness.store.get_task(i) for i in first]
    once = [await harness.store.get_task(i) for i in fresh]
    assert min(t.run_at for t in repeat) - max(t.run_at for t in once) > 20
    assert all("2 attempts died so far" in (t.error or "") for t in repeat)
    assert all("died so far" not in (t.error or "") for t in once)
    history = await harness.store.get_attempts(first[0])
    assert [a.outcome for a in history] == ["lost", "lost"]


async def test_a_lease_renewed_after_the_reaper_looked_is_kept(harness: Harness) -> None:
    """The reaper's write checks the lease again: a worker (or its watchdog) that renewed
    between the reaper's look and its write keeps its attempt."""
    store = harness.store
    task = await harness.submit(name="record")
    now = time.time()
    [claimed] = await store.claim("w1", "default", 1, now - 10, 1.0)
    expired = await store.expired_leases(now)
    assert [t.id for t in expired] == [task["id"]]
    assert await store.heartbeat("w1", [task["id"]], now + 30) == set()  # renewed meanwhile
    lost = Completion.failure(claimed, now, "lost", "worker w1 stopped renewing its lease")
    await store.complete([lost], lapsed=now)
    row = await store.get_task(task["id"])
    assert row.status == "running" and row.attempts == 1
    assert [a.outcome for a in await store.get_attempts(task["id"])] == [None]
    await store.complete([lost], lapsed=now + 60)  # now it did run out
    assert (await store.get_task(task["id"])).status == "failed"
    assert [a.outcome for a in await store.get_attempts(task["id"])] == ["lost"]
