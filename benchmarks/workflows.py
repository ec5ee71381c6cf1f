"""Workflow benchmark: a chord of N no-op tasks and one callback vs N independent no-op
tasks, on SQLite and PostgreSQL, with the ratio of their wall times printed; and a chain
of ``--chain`` steps, with the per-step overhead (end of step k -> start of step k+1).

Run from the repository root::

    python benchmarks/workflows.py                       # N = 10,000 on both back-ends
    python benchmarks/workflows.py --count 2000 --backend sqlite --workers 2

Each run gets a fresh database (a SQLite file in a temporary directory, a PostgreSQL schema
``bench_<random>`` dropped afterwards) and ``--workers`` in-process workers (concurrency
``--concurrency``) on one store, as ``chronoq dev`` runs them. The timer starts before
the submission and stops when the last task succeeded (independent tasks: a count of
succeeded rows read every 20 ms) or when the callback's result arrived (the chord:
``WorkflowHandle.aresult``). The chord's extra work is the workflow's rows and, per
completion, its callback's counter update; the ratio says what that costs.

The chain's overhead is read from the attempts: step k+1's ``started_at`` (stamped by the
claiming worker) minus step k's ``finished_at`` (stamped by its worker when the handler
returned, before the write): the completion write, the child's wake-up and its claim.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chronoq
from benchmarks.common import (
    DEFAULT_POSTGRES,
    Database,
    Percentiles,
    drop_schema,
    fetch,
    postgres_database,
    say,
    sqlite_database,
)
from chronoq.config import Settings
from chronoq.worker import Worker


def make_app(url: str) -> tuple[chronoq.App, Any, Any]:
    app = chronoq.App(settings=Settings(database_url=url, auth=False, poll_seconds=0.2))

    @app.task("bench.noop", max_attempts=1)
    async def noop(i: int = 0) -> int:
        return i

    @app.task("bench.step", max_attempts=1)
    async def step(result: int = 0) -> int:
        return result + 1

    @app.task("bench.total", max_attempts=1)
    async def total(results: list[int]) -> int:
        return len(results)

    return app, noop, total, step


async def timed(db: Database, count: int, workers: int, concurrency: int, chord: bool) -> float:
    app, noop, total, _ = make_app(db.url)
    async with app:
        running = [
            Worker(app.store, app.executors(), concurrency=concurrency, poll_seconds=0.2)
            for _ in range(workers)
        ]
        jobs = [asyncio.create_task(w.run(drain_seconds=5)) for w in running]
        await asyncio.sleep(0.3)  # the workers are up and idle
        started = time.perf_counter()
        if chord:
            flow = chronoq.chord([noop.s(i=i) for i in range(count)], total.s())
            handle = await flow.adelay("bench")
            assert await handle.aresult(recheck_seconds=0.05) == count
        else:
            for start in range(0, count, 1000):
                await noop.adelay_many({"i": i} for i in range(start, min(count, start + 1000)))
            while True:
                rows = await fetch(
                    app.store, "SELECT count(*) AS n FROM tasks WHERE status = 'succeeded'"
                )
                if rows[0]["n"] >= count:
                    break
                await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        for w in running:
            w.stop()
        await asyncio.gather(*jobs)
    return seconds


async def chain_overhead(db: Database, steps: int) -> Percentiles:
    """Run a chain of ``steps`` on one in-process worker; the gaps between its steps."""
    app, _, _, step = make_app(db.url)
    async with app:
        worker = Worker(app.store, app.executors(), concurrency=4, poll_seconds=0.2)
        job = asyncio.create_task(worker.run(drain_seconds=5))
        await asyncio.sleep(0.3)
        handle = await chronoq.chain(*(step.s() for _ in range(steps))).adelay("chain")
        assert await handle.aresult(recheck_seconds=0.05) == steps
        rows = await fetch(
            app.store,
            "SELECT t.node, a.started_at, a.finished_at FROM attempts a "
            "JOIN tasks t ON t.id = a.task_id WHERE t.workflow_id = $1",
            handle.id,
        )
        worker.stop()
        await job
    ordered = sorted(rows, key=lambda r: int(r["node"].split(":")[0]))
    gaps = [b["started_at"] - a["finished_at"] for a, b in itertools.pairwise(ordered)]
    return Percentiles.of(gaps)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chain", type=int, default=1000, help="chain length (0: skip)")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"{'backend':<10} {'independent s':>14} {'chord s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            figures = []
            for chord in (False, True):
                db = (
                    sqlite_database(Path(tmp) / f"{backend}-{chord}.db")
                    if backend == "sqlite"
                    else postgres_database(args.database_url)
                )
                say(f"{backend}: {'chord' if chord else 'independent'} of {args.count}")
                try:
                    figures.append(
                        await timed(db, args.count, args.workers, args.concurrency, chord)
                    )
                finally:
                    if db.schema:
                        await drop_schema(db.url, db.schema)
            plain, fan_in = figures
            print(f"{backend:<10} {plain:>14.2f} {fan_in:>9.2f} {fan_in / plain:>6.2f}")
        if args.chain:
            print(f"\nchain of {args.chain}: step k end -> step k+1 start, ms")
            print(f"{'backend':<10} {'p50 / p95 / p99 / max':>24}")
        for backend in backends if args.chain else []:
            db = (
                sqlite_database(Path(tmp) / f"{backend}-chain.db")
                if backend == "sqlite"
                else postgres_database(args.database_url)
            )
            say(f"{backend}: chain of {args.chain}")
            try:
                gaps = await chain_overhead(db, args.chain)
            finally:
                if db.schema:
                    await drop_schema(db.url, db.schema)
            print(f"{backend:<10} {gaps.brief():>24}")


if __name__ == "__main__":
    asyncio.run(main())
