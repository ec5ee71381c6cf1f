"""The async pool stays honest: a handler that blocks the event loop past its lease is
logged (task id, stack) and runs once, because the watchdog thread renews the leases."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest

from chronoq import App
from tests.conftest import Harness
from tests.processes import Proc, cli, free_port, wait_ready, wait_status


async def test_a_blocked_loop_is_reported_once_and_its_leases_renewed(
    app: App, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """lease 2 s, heartbeat 0.3 s: a 3 s block would lose the lease without the watchdog."""

    @app.task("block")
    async def block() -> str:
        time.sleep(3)  # noqa: ASYNC251 - the point of the test
        return "done"

    caplog.set_level(logging.INFO, logger="chronoq.watchdog")
    worker = harness.start_worker(concurrency=2)
    task = await harness.submit(name="block")
    done = await harness.wait_for(task["id"], "succeeded", timeout=15)
    assert [a["outcome"] for a in done["attempt_history"]] == ["succeeded"]
    assert worker.watchdog.blocks == 1
    assert worker.watchdog.renewals >= 2  # every heartbeat period of the block
    reports = [r for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]  # once per block
    message = reports[0].getMessage()
    assert f"by task {task['id']}" in message
    assert "time.sleep(3)" in message and "in block" in message  # the stack names the culprit
    deadline = time.monotonic() + 2
    while not any("answered again" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the end of the block was not logged"
        await asyncio.sleep(0.05)
    lease = (await harness.store.get_task(task["id"])).lease_expires_at
    assert lease is None  # finished: nothing renews it any more


async def test_no_database_traffic_while_the_loop_answers(app: App, harness: Harness) -> None:
    @app.task("nap")
    async def nap() -> None:
        await asyncio.sleep(1.5)

    worker = harness.start_worker()
    task = await harness.submit(name="nap")
    await harness.wait_for(task["id"], "succeeded", timeout=10)
    assert worker.watchdog.blocks == 0 and worker.watchdog.renewals == 0
    assert worker.watchdog._store is None  # never even connected


def test_blocking_handler_with_short_lease_runs_once_beside_a_second_worker(
    db_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """Real processes: API, scheduler and two workers, lease 3 s; the handler blocks its
    worker's loop for 8 s. One attempt, one run, and the warning names the task and
    ``time.sleep``."""
    _block_once_beside_a_second_worker(db_url, tmp_path, procs, {})


def test_blocking_handler_runs_once_with_the_redis_broker(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """The same through Redis Streams (its own database and queue: nobody else's streams)."""
    queue = f"block{uuid.uuid4().hex[:8]}"
    _block_once_beside_a_second_worker(
        pg_url,
        tmp_path,
        procs,
        {"CHRONOQ_BROKER_URL": "redis://127.0.0.1:6379/9", "CHRONOQ_QUEUES": queue},
        queue,
    )


def _block_once_beside_a_second_worker(
    db_url: str, tmp_path: Path, procs: list[Proc], extra: dict[str, str], queue: str = "default"
) -> None:
    record = tmp_path / "record.txt"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_DATABASE_URL": db_url,
        "RECORD_FILE": str(record),
        "CHRONOQ_AUTH": "0",
        "CHRONOQ_APP": "tests.apps.blocker:app",
        "CHRONOQ_LEASE_SECONDS": "3",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
        "CHRONOQ_POLL_SECONDS": "0.2",
        **extra,
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    api = Proc(["api", "--port", str(port)], env, tmp_path / "api.log")
    procs.append(api)
    procs.append(Proc(["scheduler"], env, tmp_path / "scheduler.log"))
    workers = [Proc(["worker", "--concurrency", "4"], env, tmp_path / f"w{n}.log") for n in (1, 2)]
    procs.extend(workers)
    wait_ready(url, api)
    deadline = time.monotonic() + 20
    while len(httpx.get(f"{url}/v1/workers").json()) < 2:
        assert time.monotonic() < deadline, "workers did not register"
        time.sleep(0.1)

    task = httpx.post(
        f"{url}/v1/tasks",
        json={"name": "block", "payload": {"seconds": 8}, "max_attempts": 3, "queue": queue},
    ).json()
    done = wait_status(url, task["id"], "succeeded", "failed", "dead", timeout=30)
    assert [a["outcome"] for a in done["attempt_history"]] == ["succeeded"], done
    runs = record.read_text().splitlines()
    assert len(runs) == 1, runs  # never started a second time while it still ran
    logs = "\n".join(w.output() for w in workers)
    assert logs.count("event loop blocked") == 1, logs
    assert f"by task {task['id']}" in logs and "time.sleep(seconds)" in logs, logs
    for proc in procs:
        assert proc.terminate() == 0, proc.output()
