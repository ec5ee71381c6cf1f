"""Queue counts (chronoq.store.counts): active statuses from their partial indexes, finished
ones from the rolled-up counts plus the rows past the mark, kept right by the triggers of
migration 0024 when rows leave (deleted, retried)."""

from __future__ import annotations

import time
from dataclasses import astuple

from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store import Store, create_store, opened
from chronoq.store import counts as counting
from chronoq.store.history import Window, counts, durations
from chronoq.store.retention import Expired, delete_batch
from tests.test_retention import DAY, finished


async def truth(store: Store, namespace: str | None = None) -> dict[tuple[str, str], int]:
    """What a GROUP BY over the whole table says."""
    where, args = ("WHERE namespace = $1 ", [namespace]) if namespace else ("", [])
    async with store.conn() as c:
        rows = await c.fetch(
            f"SELECT queue, status, count(*) AS n FROM tasks {where}GROUP BY queue, status",
            *args,
        )
    return {(r["queue"], r["status"]): int(r["n"]) for r in rows}


async def listed(store: Store, namespace: str | None = None) -> dict[tuple[str, str], int]:
    stats = await store.queue_stats(time.time(), namespace)
    return {(q.queue, str(s)): n for q in stats for s, n in q.counts.items() if n}


async def test_counts_match_the_table_across_moves_deletes_and_retries(db_url: str) -> None:
    async with opened(create_store(db_url)) as store:
        dead = await finished(store, "dead", queue="a", age=2 * DAY, n=4)
        await finished(store, "succeeded", queue="a", age=2 * DAY, n=5)
        await finished(store, "succeeded", queue="b", age=DAY, n=3, namespace="other")
        await finished(store, "cancelled", queue="b", age=DAY, n=2)
        await finished(store, "scheduled", queue="c", age=0, n=2)
        await store.create_tasks([TaskCreate(name="job", queue="c")], time.time())
        assert await listed(store) == await truth(store)
        # the mark moves past every finished row: they are now rolled up
        assert await counting.advance(store, time.time(), min_rows=1) == 14
        assert await counting.advance(store, time.time(), min_rows=1) == 0  # nothing new
        async with store.conn() as c:
            rolled = await c.fetch("SELECT sum(n) AS n FROM finished_counts")
        assert int(rolled[0]["n"]) == 14
        assert await listed(store) == await truth(store)
        assert await listed(store, "other") == await truth(store, "other")
        # rows leave the rolled-up part: purged in a batch, deleted one by one, retried
        n, _ = await delete_batch(store, Expired(Status.SUCCEEDED, "a", time.time()), None, 2)
        assert n == 2
        await store.delete_task(dead[0])
        # new ones finish after the mark
        await finished(store, "dead", queue="a", age=0, n=2)
        await store.retry_task(dead[1], time.time())
        assert await listed(store) == await truth(store)
        assert await listed(store, "other") == await truth(store, "other")
        assert (await listed(store))[("a", "dead")] == 4  # 4 - deleted - retried + 2 new


async def test_active_counts_read_only_their_partial_indexes(pg_url: str) -> None:
    """At 200,000 finished rows the active part of the count is five index scans bounded
    by status, never a scan of the table, and the finished part reads a range past the mark."""
    async with opened(create_store(pg_url)) as store:
        async with store.tx() as c:
            await c.execute(
                "INSERT INTO tasks (id, name, queue, status, payload, run_at, created_at, "
                "updated_at, max_attempts, backoff) SELECT 'x' || g, 'job', 'q' || (g % 4), "
                "CASE WHEN g % 1000 = 0 THEN 'queued' ELSE 'succeeded' END, '{}', g, g, g, "
                "1, '{}' FROM generate_series(1, 200000) g"
            )
            await c.execute("ANALYZE tasks")
        sql, args = counting._active_sql(None)
        async with store.conn() as c:
            plan = "\n".join(r[0] for r in await c.fetch(f"EXPLAIN {sql}", *args))
        # each part walks an index bounded by its status: a partial one, or tasks_by_status
        assert "Seq Scan" not in plan, plan
        assert plan.count("Index Scan") + plan.count("Index Only Scan") == 5, plan
        assert await counting.advance(store, time.time()) == 199_800
        assert await listed(store) == await truth(store)


async def test_charts_read_the_rolled_up_statistics_as_they_read_the_tasks(db_url: str) -> None:
    """Before the mark moves the charts count tasks; after, ``finished_stats``: the same
    counts, and run/wait quantiles within a histogram bin of the exact ones."""
    async with opened(create_store(db_url)) as store:
        for age in (7000.0, 3000.0, 1000.0, 200.0):
            await finished(store, "succeeded", queue="a", age=age, n=3, name="one")
            await finished(store, "dead", queue="b", age=age, n=1, name="two")
        now = time.time()
        windows = [
            Window(now // 3600 * 3600 - 3 * 3600, 900.0, 16),
            Window(now // 300 * 300 - 7200, 300.0, 25, name="one"),
            Window(now // 30 * 30 - 3600, 30.0, 121, queue="b"),
        ]
        before = [sorted(map(astuple, await counts(store, w))) for w in windows]
        exact = await durations(store, windows[0])
        assert await counting.advance(store, now, min_rows=1) == 16
        assert await counting.mark(store) > now - 60
        assert [sorted(map(astuple, await counts(store, w))) for w in windows] == before
        binned = await durations(store, windows[0])
        assert [(d.bucket, d.count) for d in binned] == [(d.bucket, d.count) for d in exact]
        for b, e in zip(binned, exact, strict=True):
            for got, want in zip(b.run + b.wait, e.run + e.wait, strict=True):
                assert abs(got - want) <= 0.3 * want + 1e-3, (b, e)
        # purging leaves the history as it was, and the totals follow the table
        n, _ = await delete_batch(store, Expired(Status.DEAD, "b", time.time()), None, 10)
        assert n == 4
        assert [sorted(map(astuple, await counts(store, w))) for w in windows] == before
        assert await listed(store) == await truth(store)
        # tasks finished after the mark are binned from their attempts (by the database on
        # PostgreSQL) beside the statistics before it
        await finished(store, "succeeded", queue="a", age=0, n=3, name="one")
        after = await durations(store, windows[0])
        assert sum(d.count for d in after) == 15
        # the last 15-minute bucket holds these 3, and the 3 of 200 s ago unless a quarter
        # hour began in between
        late = 3 + (3 if (now - 200) // 900 == time.time() // 900 else 0)
        assert after[-1].count == late and all(v > 0 for v in after[-1].run + after[-1].wait)
