"""Partitioned schedulers under kill -9: 3 ``chronoq scheduler`` processes on PostgreSQL
share 1,000 crons due every second; the leader (which also holds a third of the
partitions) is killed with -9 in the middle of the window. The survivors take its
partitions over within the lease TTL and catch its slots up: every (schedule, slot) of the
window fired exactly once."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chronoq import App
from chronoq.models import ScheduleCreate
from chronoq.partitions import PARTITION
from tests.chaos.test_chaos import leader_pid, query
from tests.processes import Proc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCHEDULES = 1000
WINDOW = 16  # seconds of slots
KILL_AT = 4  # seconds into the window


def owners(url: str) -> dict[str, int]:
    """Live partition leases per holder."""
    rows = query(
        url,
        f"SELECT holder, COUNT(*) AS n FROM leases WHERE name LIKE '{PARTITION}%' "
        f"AND expires_at > {time.time()} GROUP BY holder",
    )
    return {r["holder"]: int(r["n"]) for r in rows}


def test_kill_9_of_one_of_three_schedulers_loses_and_doubles_no_slot(
    pg_url: str, tmp_path: Path
) -> None:
    start = float(math.ceil(time.time() + 8))

    async def setup() -> None:
        spec = {
            "cron": "* * * * * *",
            "task": {"name": "noop"},
            "misfire_policy": "catch_up",
            "max_catch_up": 100,
            "start_at": datetime.fromtimestamp(start, UTC).isoformat(),
            "end_at": datetime.fromtimestamp(start + WINDOW - 0.5, UTC).isoformat(),
        }
        async with App(pg_url) as app:
            names = iter(range(SCHEDULES))

            async def lane() -> None:
                for n in names:
                    await app.store.schedules.create(
                        ScheduleCreate.model_validate({**spec, "name": f"tick-{n}"}), time.time()
                    )

            await asyncio.gather(*(lane() for _ in range(8)))

    asyncio.run(setup())
    assert time.time() < start, "creating the schedules took past the window's start"
    env = {"CHRONOQ_DATABASE_URL": pg_url, "CHRONOQ_POLL_SECONDS": "0.2"}
    procs = [Proc(["scheduler"], env, tmp_path / f"s{n}.log") for n in range(3)]
    pids = {p.popen.pid for p in procs}
    try:
        deadline = time.monotonic() + 20
        while len(owners(pg_url)) < 3:  # every scheduler fires a share before the window
            assert time.monotonic() < deadline, f"partitions not shared: {owners(pg_url)}"
            time.sleep(0.2)
        assert time.time() < start, "the schedulers shared the partitions too late"
        time.sleep(max(0.0, start + KILL_AT - time.time()))
        victim = leader_pid(pg_url)
        assert victim in pids
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            held = owners(pg_url)
            if sum(held.values()) == 64 and not any(f":{victim}:" in h for h in held):
                break
            assert time.monotonic() < deadline, f"its partitions were not taken over: {held}"
            time.sleep(0.1)
        failover = time.time() - killed_at
        assert len(held) == 2 and failover < 10, (held, failover)
        deadline = time.monotonic() + WINDOW + 30
        while query(pg_url, "SELECT 1 FROM schedules WHERE next_fire_at IS NOT NULL LIMIT 1"):
            assert time.monotonic() < deadline, "the schedules did not reach their end"
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.terminate()
    duplicates = query(
        pg_url,
        "SELECT schedule_id, slot FROM tasks GROUP BY schedule_id, slot HAVING COUNT(*) > 1",
    )
    assert not duplicates, f"{len(duplicates)} slots fired twice"
    fired = query(pg_url, "SELECT slot, COUNT(*) AS n FROM tasks GROUP BY slot ORDER BY slot")
    per_slot = {float(r["slot"]): int(r["n"]) for r in fired}
    assert per_slot == {start + k: SCHEDULES for k in range(WINDOW)}, per_slot
    print(f"{sum(per_slot.values())} slots once each; partitions taken over in {failover:.1f}s")
