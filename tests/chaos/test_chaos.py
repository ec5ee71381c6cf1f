"""Chaos: 2 APIs, 3 schedulers and 3 workers on PostgreSQL + Redis; workers are killed with
-9 and restarted, the leading scheduler is killed, Redis is killed and restarted empty.
Afterwards every accepted task has reached a terminal state and no slot fired twice."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import PG_URL
from tests.processes import Proc, cli, free_port, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TASKS = 5000
SCHEDULES = 20
CHAOS_SECONDS = 30


class Redis:
    """A redis-server of our own (no persistence), so killing it disturbs nothing else."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def query(url: str, sql: str) -> list[Any]:
    schema = url.split("schema=")[1]

    async def run() -> list[Any]:
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def leader_pid(url: str) -> int | None:
    rows = query(
        url, f"SELECT holder FROM leases WHERE name = 'scheduler' AND expires_at > {time.time()}"
    )
    return int(rows[0]["holder"].split(":")[1]) if rows else None


def test_chaos(pg_url: str, tmp_path: Path) -> None:
    if not any(
        os.access(os.path.join(p, "redis-server"), os.X_OK)
        for p in os.environ.get("PATH", "").split(os.pathsep)
    ):
        pytest.skip("redis-server is not installed")
    redis = Redis(tmp_path)
    redis.start()
    record = tmp_path / "record.txt"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "CHRONOQ_BROKER_URL": redis.url,
        "CHRONOQ_REDIS_URL": redis.url,
        "CHRONOQ_APP": "tests.apps.recorder:app",
        "RECORD_FILE": str(record),
        "CHRONOQ_LEASE_SECONDS": "2",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
        "CHRONOQ_POLL_SECONDS": "0.2",
        "CHRONOQ_LOG_LEVEL": "warning",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    key = cli("keys", "create", "chaos", env=env).stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    apis = [
        Proc(["api", "--port", str(p)], env, tmp_path / f"api{n}.log") for n, p in enumerate(ports)
    ]
    schedulers = [Proc(["scheduler"], env, tmp_path / f"sched{n}.log") for n in range(3)]
    workers = [
        Proc(["worker", "--concurrency", "16"], env, tmp_path / f"w{n}-0.log") for n in range(3)
    ]
    everything = [*apis, *schedulers, *workers]
    counts: Counter[str] = Counter()
    failover_seconds: list[float] = []
    try:
        for url, api in zip(urls, apis, strict=True):
            wait_ready(url, api)
        for n in range(SCHEDULES):
            response = httpx.post(
                f"{urls[n % 2]}/v1/schedules",
                headers=auth,
                json={
                    "name": f"every-second-{n}",
                    "cron": "* * * * * *",
                    "misfire_policy": "catch_up",
                    "max_catch_up": 100,
                    "task": {"name": "record", "max_attempts": 10},
                },
            )
            assert response.status_code == 201, response.text

        accepted: list[str] = []

        local = threading.local()

        def submit(i: int) -> str:
            if not hasattr(local, "clients"):  # one keep-alive client per thread and API
                local.clients = [httpx.Client(base_url=u, timeout=30, headers=auth) for u in urls]
            response = local.clients[i % 2].post(
                "/v1/tasks",
                json={
                    "name": "record",
                    "payload": {"sleep": random.choice([0, 0.01, 0.05])},
                    "max_attempts": 10,
                    "backoff": {"base": 0.2, "max": 2},
                },
            )
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        pool = concurrent.futures.ThreadPoolExecutor(16)
        submitting = [pool.submit(submit, i) for i in range(TASKS)]

        started = time.monotonic()
        next_worker_kill = started + 3
        scheduler_killed = redis_restarted = False
        while time.monotonic() - started < CHAOS_SECONDS:
            now = time.monotonic()
            if now >= next_worker_kill:
                n = random.randrange(len(workers))
                workers[n].kill()
                counts["workers killed"] += 1
                workers[n] = Proc(
                    ["worker", "--concurrency", "16"],
                    env,
                    tmp_path / f"w{n}-{counts['workers killed']}.log",
                )
                everything.append(workers[n])
                next_worker_kill = now + 3
            if not scheduler_killed and now - started > 8:
                leader = leader_pid(pg_url)
                assert leader is not None, "no scheduler leads"
                [victim] = [s for s in schedulers if s.popen.pid == leader]
                killed_at = time.monotonic()
                victim.kill()
                while leader_pid(pg_url) in (leader, None):
                    assert time.monotonic() - killed_at < 15, "no scheduler took over"
                    time.sleep(0.1)
                failover_seconds.append(time.monotonic() - killed_at)
                counts["schedulers killed"] += 1
                scheduler_killed = True
            if not redis_restarted and now - started > 18:
                redis.kill()
                time.sleep(1)
                redis.start()
                counts["redis restarts"] += 1
                redis_restarted = True
            time.sleep(0.1)

        print(
            f"\nchaos phase over after {time.monotonic() - started:.0f}s; "
            f"{sum(f.done() for f in submitting)} of {TASKS} submitted",
            flush=True,
        )
        accepted = [f.result(timeout=120) for f in submitting]
        print(f"all submitted after {time.monotonic() - started:.0f}s", flush=True)
        pool.shutdown()
        for url in urls:
            for n in range(SCHEDULES):
                httpx.post(f"{url}/v1/schedules/every-second-{n}/pause", headers=auth)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            open_tasks = query(
                pg_url,
                "SELECT COUNT(*) AS n FROM tasks WHERE status NOT IN "
                "('succeeded', 'dead', 'cancelled')",
            )[0]["n"]
            if open_tasks == 0:
                break
            time.sleep(0.5)
        statuses = dict(query(pg_url, "SELECT status, COUNT(*) FROM tasks GROUP BY status"))
        missing = set(accepted) - {
            r["id"]
            for r in query(
                pg_url, "SELECT id FROM tasks WHERE status = 'succeeded' AND schedule_id IS NULL"
            )
        }
        doubled_slots = query(
            pg_url,
            "SELECT schedule_id, slot FROM tasks WHERE schedule_id "
            "IS NOT NULL GROUP BY 1, 2 HAVING COUNT(*) > 1",
        )
        fired = query(pg_url, "SELECT COUNT(*) AS n FROM tasks WHERE schedule_id IS NOT NULL")
        runs = Counter(
            (t, a) for t, _, a in (line.split() for line in record.read_text().splitlines())
        )
        retried = query(pg_url, "SELECT COUNT(*) AS n FROM tasks WHERE attempts > 1")[0]["n"]
        print(
            f"\nchaos: {len(accepted)} tasks accepted, statuses {statuses}, "
            f"{fired[0]['n']} schedule runs, {retried} tasks retried after a crash, "
            f"{sum(1 for c in runs.values() if c > 1)} attempts executed twice, "
            f"{dict(counts)}, scheduler failover {failover_seconds} s"
        )
        assert len(accepted) == TASKS
        assert not missing, f"{len(missing)} accepted tasks did not succeed (lost)"
        assert statuses.get("dead", 0) == 0 and set(statuses) == {"succeeded"}
        assert doubled_slots == [], "a (schedule, slot) fired twice"
        assert all(c == 1 for c in runs.values()), "an attempt was executed twice"
        assert counts["workers killed"] >= 8 and counts["redis restarts"] == 1
        assert failover_seconds and failover_seconds[0] < 10
        # recovery: every restarted worker took work
        alive = httpx.get(f"{urls[0]}/v1/workers", headers=auth).json()
        assert len(alive) == 3 and all(w["processed"] > 0 or w["running"] >= 0 for w in alive)
    finally:
        for proc in everything:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGKILL)
                proc.popen.wait()
        if redis.proc is not None and redis.proc.poll() is None:
            redis.kill()
