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
returned, before the write): the completion write, the child's wake-up and its claim. The
chain's throughput is its length over its wall time, submission to the last result.

Beside it (``--celery``, on by default when Celery is installed: ``pip install -e
'.[bench]'``) runs a Celery chain of the same length in its fastest honest setup: Redis
broker (``--celery-broker``, DB 14, flushed before and after), no result backend (a chain
passes results inside its messages; a backend is needed only to read them back or for a
chord), one ``celery worker -P solo`` (the step runs in the process that reads the broker:
no hand-off to a pool child), without gossip, mingle and heartbeat. Each Celery step
stamps its start minus the previous step's handler return (what chronoq's attempts
give), the last one pushes to a Redis list the benchmark waits on (BLPOP, no polling).
Ratios are chronoq / Celery: below 1 is better for latencies, above 1 for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import os
import subprocess
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


def make_app(url: str) -> tuple[chronoq.App, Any, Any, Any]:
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


async def chain_overhead(db: Database, steps: int) -> tuple[Percentiles, float]:
    """Run a chain of ``steps`` on one in-process worker; the gaps between its steps and
    the chain's wall time (submission to result)."""
    app, _, _, step = make_app(db.url)
    async with app:
        worker = Worker(app.store, app.executors(), concurrency=4, poll_seconds=0.2)
        job = asyncio.create_task(worker.run(drain_seconds=5))
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        handle = await chronoq.chain(*(step.s() for _ in range(steps))).adelay("chain")
        assert await handle.aresult(recheck_seconds=0.05) == steps
        wall = time.perf_counter() - started
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
    return Percentiles.of(gaps), wall


def celery_chain(broker: str, steps: int, pool: str) -> tuple[Percentiles, float]:
    """A Celery chain of ``steps`` on one ``celery worker -P pool``; the gaps between
    its steps and its wall time (``apply_async`` to the last step's push)."""
    import celery
    import redis

    os.environ["BENCH_CELERY_CHAIN_BROKER"] = broker
    from benchmarks import celery_chain_app as capp

    r = redis.Redis.from_url(broker, socket_timeout=700)
    r.flushdb()
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    command = [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_chain_app", "worker",
        "-P", pool, "-c", "1", "--loglevel", "WARNING", "--without-gossip",
        "--without-mingle", "--without-heartbeat", "-n", f"chain-{os.getpid()}@%h",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL)
    try:
        warm = celery.chain(*(capp.chain_step.s(last=3) for _ in range(3)))
        warm.apply_async()
        if r.blpop(["chain:done"], timeout=60) is None:
            raise RuntimeError("the Celery worker did not run a warm-up chain in 60 s")
        r.delete("chain:gaps")
        flow = celery.chain(*(capp.chain_step.s(last=steps) for _ in range(steps)))
        started = time.perf_counter()
        flow.apply_async()
        if r.blpop(["chain:done"], timeout=600) is None:
            raise RuntimeError(f"the Celery chain of {steps} did not finish in 600 s")
        wall = time.perf_counter() - started
        gaps = [float(g) for g in r.lrange("chain:gaps", 0, -1)]
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        r.flushdb()
        r.close()
        capp.app.close()
    return Percentiles.of(gaps), wall


def _ratio(mine: float | None, theirs: float | None) -> str:
    return f"{mine / theirs:.2f}" if mine is not None and theirs else "-"


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chain", type=int, default=1000, help="chain length (0: skip)")
    parser.add_argument(
        "--celery",
        action=argparse.BooleanOptionalAction,
        default=importlib.util.find_spec("celery") is not None,
        help="run a Celery chain beside chronoq's (default: when Celery is installed)",
    )
    parser.add_argument("--celery-broker", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--celery-pool", default="solo", help="celery worker -P (solo)")
    parser.add_argument("--skip-chord", action="store_true", help="only the chain (and Celery's)")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if not args.skip_chord:
        print(f"{'backend':<10} {'independent s':>14} {'chord s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends if not args.skip_chord else []:
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
        results: dict[str, tuple[Percentiles, float]] = {}
        for backend in backends if args.chain else []:
            db = (
                sqlite_database(Path(tmp) / f"{backend}-chain.db")
                if backend == "sqlite"
                else postgres_database(args.database_url)
            )
            say(f"{backend}: chain of {args.chain}")
            try:
                results[backend] = await chain_overhead(db, args.chain)
            finally:
                if db.schema:
                    await drop_schema(db.url, db.schema)
        if args.chain and args.celery:
            say(f"celery -P {args.celery_pool}, no result backend: chain of {args.chain}")
            results["celery"] = await asyncio.to_thread(
                celery_chain, args.celery_broker, args.chain, args.celery_pool
            )
        if args.chain:
            print(f"\nchain of {args.chain}: step k end -> step k+1 start, ms; steps/s")
            print(f"{'system':<10} {'p50 / p95 / p99 / max':>24} {'wall s':>7} {'steps/s':>8}")
            for system, (gaps, wall) in results.items():
                rate = args.chain / wall
                print(f"{system:<10} {gaps.brief():>24} {wall:>7.2f} {rate:>8.0f}")
        if args.chain and "celery" in results:
            theirs, their_wall = results["celery"]
            print("\nchronoq / celery: p50, p99 (below 1: faster steps), steps/s (above 1)")
            for backend in backends:
                mine, my_wall = results[backend]
                print(
                    f"{backend:<10} p50 {_ratio(mine.p50_ms, theirs.p50_ms)}  "
                    f"p99 {_ratio(mine.p99_ms, theirs.p99_ms)}  "
                    f"steps/s {_ratio(their_wall, my_wall)}"
                )


if __name__ == "__main__":
    asyncio.run(main())
