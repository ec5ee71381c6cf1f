"""Chaos for concurrency limits: three worker processes run tasks of four keys of limit 1
(PostgreSQL, short leases); workers holding limited slots are killed with -9 twice and
replaced. Sampled all along, no key ever has more than one task running; the attempt
records of a key never overlap (a lost attempt ends when the reaper ends it, after its
lease expired, and the key's next attempt starts after that); every task succeeds."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chronoq.models import TaskCreate
from chronoq.store import create_store
from tests.chaos.test_chaos import query
from tests.processes import Proc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEYS = 4
TASKS = 40
LEASE = 1.5
HEARTBEAT = 0.25


def submit(url: str) -> None:
    async def run() -> None:
        store = create_store(url)
        await store.open()
        try:
            specs = [
                TaskCreate(
                    name="hold",
                    payload={"k": str(i % KEYS), "n": i, "seconds": 0.4},
                    concurrency_key=f"k:{i % KEYS}",
                    concurrency=1,
                    max_attempts=10,
                )
                for i in range(TASKS)
            ]
            await store.create_tasks(specs, time.time())
        finally:
            await store.close()

    asyncio.run(run())


def running_per_key(url: str) -> dict[str, int]:
    rows = query(
        url,
        "SELECT concurrency_key AS k, count(*) AS n FROM tasks WHERE status = 'running' "
        "GROUP BY concurrency_key",
    )
    return {r["k"]: int(r["n"]) for r in rows}


def holders(url: str) -> set[int]:
    """The pids of the workers holding a slot now."""
    rows = query(url, "SELECT DISTINCT worker_id FROM tasks WHERE status = 'running'")
    return {int(r["worker_id"].split(":")[1]) for r in rows}


def test_killed_workers_never_let_a_key_exceed_its_limit(pg_url: str, tmp_path: Path) -> None:
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "CHRONOQ_APP": "tests.apps.limited:app",
        "CHRONOQ_LEASE_SECONDS": str(LEASE),
        "CHRONOQ_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "CHRONOQ_POLL_SECONDS": "0.2",
        "CHRONOQ_LOG_LEVEL": "warning",
    }
    from tests.processes import cli

    assert cli("db", "upgrade", env=env).returncode == 0
    scheduler = Proc(["scheduler"], env, tmp_path / "sched.log")
    workers: dict[int, Proc] = {}  # by pid (worker ids are host:pid:random)

    def start_worker(n: int) -> None:
        proc = Proc(["worker", "--concurrency", "4"], env, tmp_path / f"{n}.log")
        workers[proc.popen.pid] = proc

    for n in range(3):
        start_worker(n)
    samples: list[dict[str, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(running_per_key(pg_url))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        submit(pg_url)
        sampler.start()
        kills: list[float] = []
        started = 3
        for _ in range(2):  # kill every worker holding a slot, then replace it
            deadline = time.monotonic() + 20
            while not (held := holders(pg_url) & set(workers)):
                assert time.monotonic() < deadline, "no worker holds a slot"
                time.sleep(0.05)
            for pid in held:
                workers.pop(pid).kill()
            kills.append(time.time())
            for _ in held:
                start_worker(started)
                started += 1
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while True:
            done = query(pg_url, "SELECT count(*) AS n FROM tasks WHERE status = 'succeeded'")
            if int(done[0]["n"]) == TASKS:
                break
            assert time.monotonic() < deadline, query(
                pg_url, "SELECT status, count(*) FROM tasks GROUP BY status"
            )
            time.sleep(0.2)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        for proc in [*workers.values(), scheduler]:
            proc.terminate()

    assert samples and max(max(s.values(), default=0) for s in samples) == 1
    attempts: list[Any] = query(
        pg_url,
        "SELECT t.concurrency_key AS k, a.started_at, a.finished_at, a.outcome, a.worker_id "
        "FROM attempts a JOIN tasks t ON t.id = a.task_id ORDER BY a.started_at",
    )
    lost = [a for a in attempts if a["outcome"] == "lost"]
    assert lost, "no attempt was lost with its worker"
    for a in lost:  # a killed worker's slot came back only once its lease could expire
        killed_at = min(k for k in kills if k >= a["started_at"])
        assert a["finished_at"] >= killed_at + LEASE - HEARTBEAT - 0.2, a
    by_key: dict[str, list[Any]] = {}
    for a in attempts:
        by_key.setdefault(a["k"], []).append(a)
    for key, runs in by_key.items():
        for before, after in itertools.pairwise(runs):
            assert after["started_at"] >= before["finished_at"], (key, before, after)
