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
1, ``debounce`` 100). The per-key concurrency limits and rate limits of issue 17 are not
built yet, so their figures are not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DEFAULT_POSTGRES, drop_schema, fetch, postgres_database, say
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
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
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


if __name__ == "__main__":
    asyncio.run(main())
