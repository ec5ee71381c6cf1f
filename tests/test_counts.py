"""Queue counts (chronoq.store.counts): active statuses from their partial indexes, finished
ones from the rolled-up counts plus the rows past the mark, kept right by the triggers of
migration 0024 when rows leave (deleted, retried)."""

from __future__ import annotations

import time
from dataclasses import astuple

import pytest

from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store import Store, create_store, history, opened
from chronoq.store import counts as counting
from chronoq.store.history import BucketCount, BucketDurations, Window, counts, durations
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


async def test_durations_kept_for_buckets_behind_the_mark_match_a_fresh_read(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The durations and counts of window buckets the mark passed whole are kept in the
    process (chronoq.store.history._final): every read, as tasks finish after the mark and
    as it moves on, says what a read with nothing kept says."""
    async with opened(create_store(db_url)) as store:

        async def done(age: float, n: int, run: float, queue: str = "a") -> None:
            ids = await finished(store, "succeeded", queue=queue, age=age, n=n, name="one")
            async with store.conn() as c:  # each its own run time: quantiles tell them apart
                for i, task_id in enumerate(ids, 1):
                    await c.execute(
                        "UPDATE attempts SET finished_at = started_at + $1 WHERE task_id = $2",
                        run * i,
                        task_id,
                    )

        for age, run in ((7000.0, 0.5), (3000.0, 2.0), (1000.0, 8.0), (200.0, 30.0)):
            await done(age, 4, run)
            await done(age, 2, run * 3, queue="b")
            await finished(store, "dead", queue="b", age=age, n=1, name="two")
        now = time.time()
        windows = [
            Window(now // 900 * 900 - 3 * 3600, 900.0, 16),  # an hour past now, too
            Window(now // 60 * 60 - 7200, 60.0, 180, queue="a"),
            Window(now // 300 * 300 - 7200, 300.0, 36, name="one"),
        ]

        async def fresh(window: Window) -> list[BucketDurations]:
            history._final.clear()
            return await durations(store, window)

        async def counted(window: Window) -> list[BucketCount]:
            return sorted(await history.counts(store, window), key=astuple)

        async def fresh_counts(window: Window) -> list[BucketCount]:
            history._final.clear()
            return await counted(window)

        async def reads_agree() -> list[list[BucketDurations]]:
            kept = [await durations(store, w) for w in windows]
            again = [await durations(store, w) for w in windows]
            assert again == kept
            assert kept == [await fresh(w) for w in windows]
            tallies = [await counted(w) for w in windows]
            assert tallies == [await counted(w) for w in windows]
            assert tallies == [await fresh_counts(w) for w in windows]
            for w in windows:  # fills what is kept back, for the next round
                await durations(store, w)
                await counted(w)
            return kept

        assert await counting.advance(store, now, min_rows=1) == 28
        first = await reads_agree()
        assert sum(d.count for d in first[0]) == 24 and history._final.get(store)
        # tasks that finish after the mark: in the bucket it stands in, and later ones (as
        # if time had passed)
        await done(-5.0, 2, 16.0)
        await done(-600.0, 3, 1.0)
        await done(-1500.0, 3, 4.0, queue="b")
        second = await reads_agree()
        assert sum(d.count for d in second[0]) == 32
        # the mark moves past them: the buckets they are in are now read from the rolled-up
        # histograms, and the buckets kept before still hold
        monkeypatch.setattr(counting, "LAG", -3600.0)
        assert await counting.advance(store, now, min_rows=1) == 8
        third = await reads_agree()
        assert sum(d.count for d in third[0]) == 32
        assert [d.bucket for d in third[0]] == [d.bucket for d in second[0]]
