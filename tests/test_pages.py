"""Task pages (``GET /v1/tasks``): the list indexes leave running tasks out (migration
0026, so a claim enters two indexes instead of six), and a page merges them back in."""

from __future__ import annotations

import re
import time

from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store import Store, create_store, opened
from chronoq.store.filters import page
from tests.conftest import planner_rows


async def walk(store: Store, size: int, **filters: str | Status) -> list[str]:
    """Every task id the filters select, page by page, as a client follows the cursor."""
    ids: list[str] = []
    cursor = None
    while True:
        found = await store.list_tasks(cursor=cursor, limit=size, **filters)  # type: ignore[arg-type]
        ids += [t.id for t in found]
        if len(found) < size:
            return ids
        cursor = found[-1].id


async def test_pages_list_running_tasks_among_the_others(db_url: str) -> None:
    async with opened(create_store(db_url)) as store:
        now = time.time()
        specs = [TaskCreate(name="ab"[i % 2], queue="q") for i in range(30)]
        created = [t.id for t, _ in await store.create_tasks(specs, now)]
        await store.create_tasks([TaskCreate(name="a", queue="other")], now, "elsewhere")
        claimed = {t.id for t in await store.claim("w1", "q", 7, now, 30)}
        assert len(claimed) == 7
        newest_first = sorted(created, reverse=True)
        a = [i for n, i in enumerate(created) if n % 2 == 0]

        assert await walk(store, 4, queue="q") == newest_first
        assert await walk(store, 3, name="a", namespace="default") == sorted(a, reverse=True)
        assert await walk(store, 2, status=Status.RUNNING) == sorted(claimed, reverse=True)
        queued = await walk(store, 5, status=Status.QUEUED, queue="q")
        assert queued == [i for i in newest_first if i not in claimed]
        assert len(await walk(store, 50)) == 31
        assert [t.namespace for t in await store.list_tasks(namespace="elsewhere")] == ["elsewhere"]


async def test_pages_read_the_list_indexes_and_the_leases(db_url: str) -> None:
    """A page by handler, queue or status walks its list index (and, without a status,
    ``tasks_leases`` for the running ones), never the whole table, even in a generic
    plan; a page of running tasks reads ``tasks_leases`` alone."""
    async with opened(create_store(db_url)) as store:
        explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
        async with store.tx() as c:
            if store.dialect == "postgresql":  # the planner needs a table worth an index
                await planner_rows(c, 50_000, 100, "queued", "succeeded", names=50, queues=20)
            cases = [
                (page(store.dialect, None, None, "job1", None, None, "x9", 50), "tasks_by_name"),
                (page(store.dialect, None, "q3", None, None, None, None, 50), "tasks_by_queue"),
                (
                    page(store.dialect, Status.SUCCEEDED, None, None, None, None, None, 50),
                    "tasks_by_status",
                ),
                (
                    page(store.dialect, Status.RUNNING, "q3", None, None, None, None, 50),
                    "tasks_leases",
                ),
            ]
            for (sql, args), index in cases:
                rows = await c.fetch(explain + sql, *args)
                plan = " ".join(str(tuple(r)) for r in rows)
                assert index in plan, plan
                if "AS listed" in sql:  # no status: the running ones merged in
                    assert "tasks_leases" in plan, plan
                assert not re.search(r"SCAN tasks(?! USING)|Seq Scan", plan), plan
