"""Burst benchmark: N one-time tasks due at the same instant, on PostgreSQL.

Run from the repository root (worker processes import ``benchmarks.schedule_app``)::

    python benchmarks/bursts.py                      # 10,000 tasks, 2 workers, 1 scheduler
    python benchmarks/bursts.py --tasks 10000 --workers 2 --concurrency 64

A fresh schema ``bench_<random>`` is made (dropped at the end unless ``--keep``). K
``chronoq worker --app benchmarks.schedule_app:app`` processes and one ``chronoq scheduler``
process start; then ``--tasks`` tasks ``bench.tick`` (a no-op, one attempt) are submitted
with ``create_tasks`` (in batches, one transaction each), all with the same ``run_at`` = D,
a whole second ``--lead-seconds`` ahead. They wait as ``scheduled`` until D; the scheduler
promotes them and the workers start them. When all finished it reads:

``start lag``
    ``attempts.started_at - tasks.run_at`` (first attempt): how late after D each handler
    started (p50/p95/p99/max, ms). This is the figure the burst goal is about.
``promoted by``
    how long after D no task was ``scheduled`` any more (this process polls every 10 ms):
    the scheduler's share of the start lag; the rest is the workers' claiming.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    DEFAULT_POSTGRES,
    ChronoqProcesses,
    Percentiles,
    drop_schema,
    fetch,
    postgres_database,
    say,
)
from chronoq.models import TaskCreate  # noqa: E402
from chronoq.store import Store, create_store  # noqa: E402

APP = "benchmarks.schedule_app:app"
TASK = "bench.tick"


async def wait_registered(store: Store, procs: ChronoqProcesses, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        procs.check_alive()
        rows = await fetch(store, "SELECT COUNT(*) AS n FROM workers WHERE status = 'alive'")
        if int(rows[0]["n"]) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("workers did not register within 30 s")


async def run(args: argparse.Namespace) -> dict[str, object]:
    database = postgres_database(args.database_url)
    log_dir = Path(tempfile.mkdtemp(prefix="chronoq-bursts-"))
    store = create_store(database.url)
    env = {**os.environ, "CHRONOQ_DATABASE_URL": database.url}
    env.pop("CHRONOQ_APP", None)
    procs = ChronoqProcesses(env, log_dir)
    out: dict[str, object] = {"tasks": args.tasks, "workers": args.workers}
    try:
        await store.open()
        await store.migrate()
        for i in range(args.workers):
            procs.spawn(
                f"worker-{i}", ["worker", "--app", APP, "--concurrency", str(args.concurrency)]
            )
        procs.spawn("scheduler", ["scheduler"])
        await wait_registered(store, procs, args.workers)
        due = float(math.ceil(time.time() + args.lead_seconds))
        when = datetime.fromtimestamp(due, UTC)
        spec = TaskCreate(name=TASK, run_at=when, max_attempts=1)
        t0 = time.perf_counter()
        for start in range(0, args.tasks, 5000):
            await store.create_tasks([spec] * min(5000, args.tasks - start), time.time())
        say(f"submitted {args.tasks} tasks in {time.perf_counter() - t0:.2f}s")
        if time.time() >= due:
            raise RuntimeError("submitting took past the due time: raise --lead-seconds")
        await asyncio.sleep(max(0.0, due - time.time()))
        promoted_by = None
        while promoted_by is None and time.time() < due + args.max_wait:
            rows = await fetch(store, "SELECT COUNT(*) AS n FROM tasks WHERE status = 'scheduled'")
            if int(rows[0]["n"]) == 0:
                promoted_by = time.time() - due
            else:
                await asyncio.sleep(0.01)
        out["promoted_by_ms"] = None if promoted_by is None else round(promoted_by * 1000)
        say(f"all promoted {out['promoted_by_ms']} ms after the due time")
        deadline = time.monotonic() + args.max_wait
        while True:
            procs.check_alive()
            rows = await fetch(
                store,
                "SELECT COUNT(*) AS n FROM tasks WHERE status NOT IN "
                "('succeeded', 'failed', 'dead', 'cancelled')",
            )
            if int(rows[0]["n"]) == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{rows[0]['n']} tasks unfinished after --max-wait")
            await asyncio.sleep(0.2)
        rows = await fetch(
            store,
            "SELECT a.started_at - t.run_at AS lag FROM tasks t "
            "JOIN attempts a ON a.task_id = t.id AND a.attempt = 1",
        )
        lags = [float(r["lag"]) for r in rows]
        start_lag = Percentiles.of(lags)
        out.update(started=len(lags), start_lag=start_lag.__dict__)
        say(f"start lag ms p50/95/99/max: {start_lag.brief()}")
    finally:
        codes = procs.stop()
        out["exit_codes"] = codes
        await store.close()
        if not args.keep:
            assert database.schema is not None
            await drop_schema(args.database_url, database.schema)
            shutil.rmtree(log_dir, ignore_errors=True)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--lead-seconds", type=float, default=5.0)
    p.add_argument("--max-wait", type=float, default=120.0)
    p.add_argument(
        "--database-url", default=os.environ.get("CHRONOQ_BENCH_POSTGRES", DEFAULT_POSTGRES)
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        lag = out["start_lag"]
        assert isinstance(lag, dict)
        print(
            f"{out['tasks']} tasks due at one instant, {out['workers']} workers (PostgreSQL): "
            f"start lag p50 {lag['p50_ms']:.0f} ms, p99 {lag['p99_ms']:.0f} ms, "
            f"max {lag['max_ms']:.0f} ms; all promoted after {out['promoted_by_ms']} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
