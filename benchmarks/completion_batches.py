"""How long one completion write takes as its batch grows, on a fresh PostgreSQL schema.

A worker records its results in batches, one statement each
(:meth:`chronoq.store.postgres.PostgresStore._record`). PostgreSQL caches a generic plan
for that statement after five runs, costed with the statistics of the moment: made while
``tasks`` was nearly empty, it joined a batch to ``tasks`` by a nested loop, quadratic in
the batch. This prints, for each batch size after five small warm-up batches on the
same connection pool, the write's time and its time per result; a linear write keeps the
per-result figure flat::

    python -m benchmarks.completion_batches --sizes 100,1000,2000,4000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from chronoq.models import TaskCreate
from chronoq.store import Completion, TaskRecord
from chronoq.store.postgres import PostgresStore


async def batch(store: PostgresStore, n: int) -> list[Completion]:
    """``n`` new tasks claimed by one worker, and their successes."""
    now = time.time()
    await store.create_tasks([TaskCreate(name="bench.noop") for _ in range(n)], now)
    claimed: list[TaskRecord] = []
    while len(claimed) < n:
        claimed += await store.claim("bench", "default", n - len(claimed), now, 600.0)
    return [Completion.success(t, time.time(), None) for t in claimed]


async def main(url: str, sizes: list[int], warmups: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(f"{url}?schema={schema}", listen=False)
    await store.open()
    await store.migrate()
    try:
        for _ in range(warmups):
            await store.complete(await batch(store, 5))
        print(f"{'batch':>7} {'write ms':>9} {'ms/result':>10}")
        for n in sizes:
            done = await batch(store, n)
            start = time.perf_counter()
            await store.complete(done)
            took = (time.perf_counter() - start) * 1000
            print(f"{n:>7} {took:>9.1f} {took / n:>10.3f}")
    finally:
        async with store.conn() as c:
            await c.execute(f"DROP SCHEMA {schema} CASCADE")
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--sizes", default="16,100,500,1000,2000,4000")
    parser.add_argument("--warmups", type=int, default=8, help="small batches first")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(main(args.database_url, sizes, args.warmups))
