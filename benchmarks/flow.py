"""Flow-control benchmark (print only): what unique jobs and debounce cost a submission.

Run from the repository root::

    python benchmarks/flow.py                       # SQLite and PostgreSQL, 5,000 each
    python benchmarks/flow.py --backend postgres --tasks 20000 --concurrency 200

For each back-end, in a fresh database (a temporary SQLite file, a new PostgreSQL schema
dropped at the end), ``--tasks`` submissions go through ``Store.create_task`` with
``--concurrency`` of them in flight (the group commit writes them together), five ways:

``plain``       no flow control (the baseline: unique jobs must not slow it)
``unique``      ``unique_for=60``, every payload distinct: each submission holds a key
``duplicate``   ``unique_for=60``, one payload: every submission after the first finds it
``debounce``    ``debounce=60``, 100 keys: most submissions replace a waiting task
``idempotent``  ``idempotency_key`` seen before (the older guard, for comparison)

It prints submissions per second and the number of tasks stored (``duplicate`` must store
1, ``debounce`` 100).

``--part limits`` measures issue 17's limits with real worker processes (``--workers``,
default 4, ``chronoq worker --app benchmarks.bench_app:app``) and a ``chronoq scheduler``,
on PostgreSQL by default, every figure read back from the attempt records:

``rate``      1,000 tasks of one key under ``50/s``: first to last start (20 s ± 5 % is the
              target) and the most starts in any 1-second window (at most 55)
``keys``      10,000 tasks over 1,000 keys of limit 1: the most attempts of one key open at
              once (must be 1) and throughput against the same tasks without keys (≥ 50 %)
``fairness``  100,000 queued tasks of one key (limit 1,000: more than all the slots), then
              100 keys with one task each: their submission-to-start latency (p99 ≤ 1 s)

``--quick`` scales the fairness backlog down to 10,000 and the others by 5.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    DEFAULT_POSTGRES,
    ChronoqProcesses,
    Percentiles,
    drop_schema,
    environ_without_chronoq,
    fetch,
    postgres_database,
    say,
)
from chronoq.models import TaskCreate
from chronoq.store import create_store

MODES: dict[str, Callable[[int], TaskCreate]] = {
    "plain": lambda i: TaskCreate(name="bench.noop", payload={"i": i}, delay_seconds=3600),
    "unique": lambda i: TaskCreate(
        name="bench.noop", payload={"i": i}, delay_seconds=3600, unique_for=60
    ),
    "duplicate": lambda i: TaskCreate(
        name="bench.noop", payload={"i": 0}, delay_seconds=3600, unique_for=60
    ),
    "debounce": lambda i: TaskCreate(
        name="bench.noop", payload={"i": i}, debounce=60, unique_key=f"k{i % 100}"
    ),
    "idempotent": lambda i: TaskCreate(
        name="bench.noop", payload={"i": i}, delay_seconds=3600, idempotency_key=f"k{i % 100}"
    ),
}


async def run_mode(url: str, mode: str, tasks: int, concurrency: int) -> tuple[float, int]:
    """Submissions per second and tasks stored, in a store of its own on ``url``."""
    make = MODES[mode]
    store = create_store(url)
    await store.open()
    try:
        await store.migrate()
        await fetch(store, "DELETE FROM tasks")
        specs = [make(i) for i in range(tasks)]
        queue = iter(specs)

        async def submitter() -> None:
            for spec in queue:
                await store.create_task(spec, time.time())

        start = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        stored = (await fetch(store, "SELECT count(*) AS n FROM tasks"))[0]["n"]
    finally:
        await store.close()
    return tasks / elapsed, int(stored)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default=None)
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--part", choices=["submit", "limits"], default="submit")
    parser.add_argument("--limits", default="rate,keys,fairness", help="which limits parts")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=16, help="each worker's --concurrency")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, same checks")
    args = parser.parse_args()
    if args.part == "limits":
        await limits_main(args)
        return
    args.backend = args.backend or "both"
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"{'backend':<10} {'mode':<11} {'submits/s':>10} {'stored':>7}")
    for backend in backends:
        with tempfile.TemporaryDirectory() as folder:
            db = postgres_database(args.database_url) if backend == "postgres" else None
            url = db.url if db else f"sqlite:///{Path(folder) / 'flow.db'}"
            try:
                for mode in MODES:
                    say(f"{backend} {mode}: {args.tasks} submissions")
                    rate, stored = await run_mode(url, mode, args.tasks, args.concurrency)
                    print(f"{backend:<10} {mode:<11} {rate:>10,.0f} {stored:>7}", flush=True)
            finally:
                if db is not None and db.schema is not None:
                    await drop_schema(db.url, db.schema)


# -- limits (issue 17) ----------------------------------------------------------------------
async def submit(store: Any, specs: list[TaskCreate]) -> None:
    for start in range(0, len(specs), 5000):
        await store.create_tasks(specs[start : start + 5000], time.time())


async def wait_finished(store: Any, count: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = await fetch(
            store, "SELECT count(*) AS n FROM attempts WHERE finished_at IS NOT NULL"
        )
        if int(rows[0]["n"]) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {rows[0]['n']} of {count} attempts finished in {timeout}s")
        await asyncio.sleep(0.1)


async def attempt_rows(store: Any) -> list[Any]:
    return await fetch(
        store,
        "SELECT a.task_id, a.started_at, a.finished_at, a.worker_id, "
        "t.concurrency_key AS key, t.created_at FROM attempts a JOIN tasks t "
        "ON t.id = a.task_id ORDER BY a.started_at",
    )


def worst_overlap(rows: list[Any]) -> float:
    """The longest time two attempts of one key were both open, in seconds (0: never)."""
    by_key: dict[str, list[Any]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    worst = 0.0
    for attempts in by_key.values():
        attempts.sort(key=lambda r: r["started_at"])
        for a, b in itertools.pairwise(attempts):
            worst = max(worst, a["finished_at"] - b["started_at"])
    return worst


def most_open_per_key(rows: list[Any]) -> int:
    """The most attempts of one key open at the same moment."""
    edges: dict[str, list[tuple[float, int]]] = {}
    for r in rows:
        edges.setdefault(r["key"], []).extend([(r["started_at"], 1), (r["finished_at"], -1)])
    most = 0
    for points in edges.values():
        level = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start
            level += step
            most = max(most, level)
    return most


def busiest_second(starts: list[float]) -> int:
    """The most starts in any window [t, t + 1 s) beginning at a start."""
    starts = sorted(starts)
    most, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] < t - 1.0 + 1e-9 and j < i:
            j += 1
        most = max(most, i - j + 1)
    return most


async def limits_run(
    url: str,
    args: Any,
    label: str,
    specs: list[TaskCreate],
    *,
    before: list[TaskCreate] | None = None,
) -> list[Any]:
    """Fresh tables, workers and a scheduler up, ``before`` submitted (and its first
    attempts under way), then ``specs``; waits for every attempt; the attempt rows."""
    store = create_store(url)
    await store.open()
    try:
        await store.migrate()
        for table in ("attempts", "tasks", "rate_buckets"):
            await fetch(store, f"DELETE FROM {table}")
        # the queue has had keyed tasks (a queue's first one ever waits for the workers
        # to re-read limited_queues, up to a second: chronoq.store.limits)
        await fetch(
            store,
            "INSERT INTO limited_queues (queue, marked_at) VALUES ('default', 0) "
            "ON CONFLICT (queue) DO NOTHING",
        )
        env = environ_without_chronoq()
        env["CHRONOQ_DATABASE_URL"] = url
        with tempfile.TemporaryDirectory() as logs:
            procs = ChronoqProcesses(env, Path(logs))
            for i in range(args.workers):
                procs.spawn(
                    f"worker-{i}",
                    [
                        "worker",
                        "--app",
                        "benchmarks.bench_app:app",
                        "--concurrency",
                        str(args.slots),
                    ],
                )
            procs.spawn("scheduler", ["scheduler"])
            try:
                await warm_up(store, args.workers, procs)
                total = len(specs) + len(before or [])
                if before:
                    await submit(store, before)
                    await asyncio.sleep(1.0)
                say(f"  {label}: {total} tasks")
                await submit(store, specs)
                await wait_finished(store, total)
                return await attempt_rows(store)
            finally:
                procs.stop()
    finally:
        await store.close()


async def warm_up(store: Any, workers: int, procs: ChronoqProcesses) -> None:
    """Wait until every worker is registered, the scheduler leads and a keyed task ran;
    then empty the tables again."""
    deadline = time.monotonic() + 60
    while True:
        procs.check_alive()
        alive = await fetch(store, "SELECT count(*) AS n FROM workers WHERE status = 'alive'")
        leads = await fetch(
            store,
            "SELECT count(*) AS n FROM leases WHERE name = 'scheduler' AND expires_at > $1",
            time.time(),
        )
        if int(alive[0]["n"]) >= workers and int(leads[0]["n"]) >= 1:
            break
        if time.monotonic() > deadline:
            raise SystemExit("the workers and the scheduler did not come up in 60 s")
        await asyncio.sleep(0.2)
    await submit(store, [noop(0, concurrency_key="warm"), noop(0)])
    await wait_finished(store, 2)
    for table in ("attempts", "tasks"):
        await fetch(store, f"DELETE FROM {table}")


def noop(i: int, **extra: Any) -> TaskCreate:
    return TaskCreate(name="bench.noop", max_attempts=1, **extra)


async def limits_main(args: Any) -> None:
    parts = args.limits.split(",")
    backend = args.backend or "postgres"
    scale = 5 if args.quick else 1
    with tempfile.TemporaryDirectory() as folder:
        db = postgres_database(args.database_url) if backend == "postgres" else None
        url = db.url if db else f"sqlite:///{Path(folder) / 'flow.db'}"
        try:
            if "rate" in parts:
                n = 1000 // scale
                rows = await limits_run(
                    url,
                    args,
                    "rate 50/s",
                    [noop(i, concurrency_key="rate", rate="50/s") for i in range(n)],
                )
                starts = [r["started_at"] for r in rows]
                span = max(starts) - min(starts)
                target = (n - 1) / 50
                print(
                    f"rate     {n} tasks at 50/s: first-to-last start {span:.2f} s "
                    f"(target {target:.2f} s, {100 * (span / target - 1):+.1f} %), busiest "
                    f"1-s window {busiest_second(starts)} starts (limit 55)",
                    flush=True,
                )
            if "keys" in parts:
                n, keys = 10_000 // scale, 1000 // scale
                timings = {}
                for mode in ("unlimited", "limit 1"):
                    specs = [
                        noop(i)
                        if mode == "unlimited"
                        else noop(i, concurrency_key=f"c{i % keys}", concurrency=1)
                        for i in range(n)
                    ]
                    rows = await limits_run(url, args, f"keys {mode}", specs)
                    span = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
                    timings[mode] = n / span
                    most = most_open_per_key(rows) if mode != "unlimited" else None
                    if most is not None and most > 1:
                        say(f"  longest overlap {1000 * worst_overlap(rows):.3f} ms")
                    # a claim opens its attempts with one started_at per worker: the number
                    # of (worker, started_at) pairs is the number of claims that took tasks
                    claims = len({(r["worker_id"], r["started_at"]) for r in rows})
                    print(
                        f"keys     {n} tasks, {mode:<9} ({keys} keys): {n / span:,.0f} tasks/s, "
                        f"{n / claims:.1f} tasks per claim"
                        + (f", most open per key {most}" if most is not None else ""),
                        flush=True,
                    )
                print(
                    f"keys     limited/unlimited throughput "
                    f"{100 * timings['limit 1'] / timings['unlimited']:.0f} % (target >= 50 %)"
                )
            if "fairness" in parts:
                backlog = 100_000 // (10 if args.quick else 1)
                big = [noop(i, concurrency_key="big", concurrency=1000) for i in range(backlog)]
                small = [noop(i, concurrency_key=f"s{i}") for i in range(100)]
                rows = await limits_run(url, args, "fairness", small, before=big)
                waits = [r["started_at"] - r["created_at"] for r in rows if r["key"] != "big"]
                print(
                    f"fairness {backlog} queued of one key + 100 keys of one task: their "
                    f"submit-to-start {Percentiles.of(waits).brief()} ms (p99 target 1000)",
                    flush=True,
                )
        finally:
            if db is not None and db.schema is not None:
                await drop_schema(db.url, db.schema)


if __name__ == "__main__":
    asyncio.run(main())
