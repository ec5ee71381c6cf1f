"""Bulk retry and cancel by filter (`POST /v1/tasks/retry|cancel`, `chronoq tasks retry
--status dead ...`) and the dead-letter queue grouped by error (`GET /v1/dead-letters`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from chronoq import App
from chronoq.api.bulk import CancelFilter, RetryFilter
from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store import Completion, Store
from chronoq.store.bulk import CANCEL_ACTION, RETRY_ACTION, check
from chronoq.store.filters import TaskFilter
from tests.conftest import Harness, make_settings, planner_rows, running
from tests.processes import ROOT, start_dev, wait_status


async def dead(
    store: Store,
    n: int,
    *,
    error: str = "boom",
    name: str = "job",
    queue: str = "default",
    namespace: str = "default",
    age: float = 0.0,
) -> list[str]:
    """``n`` tasks whose only attempt failed with ``error``, dead ``age`` seconds ago."""
    now = time.time()
    specs = [TaskCreate(name=name, queue=queue, max_attempts=1) for _ in range(n)]
    ids = [t.id for t, _ in await store.create_tasks(specs, now, namespace)]
    claimed = await store.claim("w1", queue, n, now, 30)
    assert sorted(t.id for t in claimed) == sorted(ids)
    await store.complete([Completion.failure(t, now, "failed", error) for t in claimed])
    if age:
        async with store.conn() as c:
            await c.execute(
                f"UPDATE tasks SET updated_at = $1 WHERE id {store.in_list('$2')}",
                now - age,
                store.list_param(ids),
            )
    return ids


async def statuses(store: Store) -> dict[str, int]:
    async with store.conn() as c:
        rows = await c.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")
    return {r["status"]: int(r["n"]) for r in rows}


def counts(response: httpx.Response) -> dict[str, int]:
    assert response.status_code == 200, response.text
    body = response.json()
    return {"matched": body["matched"], "done": body["done"]}


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_bulk_retry_of_1000_dead_tasks_runs_them_again(app: App, harness: Harness) -> None:
    ran: list[int] = []

    @app.task("job")
    def job() -> None:
        ran.append(1)

    ids = await dead(harness.store, 1000)
    events = harness.store.events.subscribe(maxsize=100)
    body = {"filter": {"status": "dead"}, "dry_run": True}
    dry = await harness.http.post("/v1/tasks/retry", json=body)
    assert dry.status_code == 200
    assert dry.json() == {"matched": 1000, "done": 0, "next_cursor": None}
    assert await statuses(harness.store) == {"dead": 1000}  # a dry run changes nothing
    done = await harness.http.post("/v1/tasks/retry", json={**body, "dry_run": False})
    assert done.json()["done"] == 1000 and done.json()["matched"] == 1000
    assert await statuses(harness.store) == {"queued": 1000}
    published = []  # one event per retried task, in batches of 500
    while not events.queue.empty():
        published.append(events.queue.get_nowait())
    events.close()
    assert [len(batch) for batch in published] == [500, 500]
    assert {e.task_id for batch in published for e in batch} == set(ids)
    assert {e.status for batch in published for e in batch} == {"queued"}
    harness.start_worker(concurrency=50)

    async def all_succeeded() -> bool:
        return await statuses(harness.store) == {"succeeded": 1000}

    await until(all_succeeded, 60)
    assert len(ran) == 1000  # each got the extra attempt a retry grants (max_attempts 1)
    again = await harness.http.post("/v1/tasks/retry", json=body)
    assert again.json()["matched"] == 0


async def test_filters_pick_by_error_name_queue_and_time(harness: Harness) -> None:
    store, http = harness.store, harness.http
    timeouts = await dead(store, 3, error="TimeoutError: gave up after 30s\nTraceback ...")
    keyerrors = await dead(store, 2, error="KeyError: 'user'", name="sync")
    old = await dead(store, 2, error="KeyError: 'user'", name="sync", queue="q2", age=7200)

    async def retry(dry_run: bool = False, **spec: Any) -> Any:
        response = await http.post(
            "/v1/tasks/retry", json={"filter": {"status": "dead", **spec}, "dry_run": dry_run}
        )
        return counts(response)

    groups = (await http.get("/v1/dead-letters")).json()
    assert [(g["error"], g["name"], g["queue"], g["count"]) for g in groups] == [
        ("TimeoutError: gave up after 30s", "job", "default", 3),  # the first line only
        ("KeyError: 'user'", "sync", "default", 2),
        ("KeyError: 'user'", "sync", "q2", 2),
    ]
    assert [g["count"] for g in (await http.get("/v1/dead-letters?queue=q2")).json()] == [2]
    assert await retry(dry_run=True, error="Timeout") == {"matched": 3, "done": 0}
    assert await retry(dry_run=True, error="timeout") == {"matched": 0, "done": 0}
    assert await retry(dry_run=True, name="sync", updated_before="1h") == {"matched": 2, "done": 0}
    assert await retry(dry_run=True, name="sync", updated_after="1h") == {"matched": 2, "done": 0}
    assert await retry(dry_run=True, created_after="1m") == {"matched": 7, "done": 0}
    assert await retry(dry_run=True, created_before="1m") == {"matched": 0, "done": 0}
    # a group of the dead-letter view is retried with its own fields as the filter
    group = groups[2]
    assert await retry(name=group["name"], queue=group["queue"], error=group["error"]) == {
        "matched": 2,
        "done": 2,
    }
    assert {(await store.get_task(i)).status for i in old} == {"queued"}
    assert await retry(error="Timeout") == {"matched": 3, "done": 3}
    assert {(await store.get_task(i)).status for i in timeouts} == {"queued"}
    assert {(await store.get_task(i)).status for i in keyerrors} == {"dead"}
    assert [g["count"] for g in (await http.get("/v1/dead-letters")).json()] == [2]


async def test_disallowed_status_and_bad_filters_are_422(harness: Harness) -> None:
    http = harness.http
    retry, cancel = "'failed' or 'dead'", "'scheduled', 'queued', 'failed' or 'running'"
    for path, status, allowed in (
        ("/v1/tasks/retry", "queued", retry),
        ("/v1/tasks/retry", "succeeded", retry),
        ("/v1/tasks/cancel", "dead", cancel),
        ("/v1/tasks/cancel", "succeeded", cancel),
    ):
        response = await http.post(path, json={"filter": {"status": status}})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["message"] == f"filter.status: Input should be {allowed}"
        assert error["details"][0]["field"] == "filter.status"
    bad = await http.post(
        "/v1/tasks/retry", json={"filter": {"status": "dead", "updated_before": "yesterday"}}
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "filter.updated_before"
    missing = await http.post("/v1/tasks/cancel", json={"filter": {"queue": "default"}})
    assert missing.status_code == 422
    unknown = await http.post("/v1/tasks/cancel", json={"filter": {"status": "asleep"}})
    assert unknown.status_code == 422


def test_the_schema_allows_exactly_the_statuses_the_state_machine_does() -> None:
    for model, action in ((RetryFilter, RETRY_ACTION), (CancelFilter, CANCEL_ACTION)):
        assert set(get_args(model.model_fields["status"].annotation)) == action.allowed
        for status in Status:  # and the store refuses the others itself
            if status not in action.allowed:
                with pytest.raises(ValueError, match=f"{status} tasks cannot be"):
                    check(action, TaskFilter(status))


async def test_bulk_cancel_stops_running_tasks_and_spares_others(
    app: App, harness: Harness
) -> None:
    started: set[int] = set()
    stopped: list[int] = []

    @app.task("long")
    async def long(n: int) -> None:
        started.add(n)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(n)
            raise

    running_ids = [(await harness.submit(name="long", payload={"n": n}))["id"] for n in range(3)]
    harness.start_worker(concurrency=3)
    await until(lambda: asyncio.sleep(0, len(started) == 3))
    spared = await harness.submit(name="long", payload={"n": 9}, queue="other")
    response = await harness.http.post(
        "/v1/tasks/cancel", json={"filter": {"status": "running", "name": "long"}}
    )
    assert counts(response) == {"matched": 3, "done": 3}
    await until(lambda: asyncio.sleep(0, len(stopped) == 3), 10)
    for task_id in running_ids:
        task = await harness.get(task_id)
        assert task["status"] == "cancelled"
        assert task["attempt_history"][0]["outcome"] == "cancelled"
    assert (await harness.get(spared["id"]))["status"] == "queued"
    queued = await harness.http.post(
        "/v1/tasks/cancel", json={"filter": {"status": "queued", "queue": "other"}}
    )
    assert counts(queued) == {"matched": 1, "done": 1}
    assert (await harness.get(spared["id"]))["status"] == "cancelled"


async def test_bulk_actions_respect_namespaces_and_scopes(db_url: str) -> None:
    async with running(App(settings=make_settings(db_url, auth=True))) as secured:
        await namespaces_and_scopes(secured)


async def namespaces_and_scopes(secured: Harness) -> None:
    store, http = secured.store, secured.http
    _, alpha = await store.keys.create("alpha", ["write"], namespace="alpha")
    _, reader = await store.keys.create("reader", ["read"], namespace="alpha")
    mine = await dead(store, 3, namespace="alpha")
    theirs = await dead(store, 2, namespace="beta", error="other")

    def call(secret: str, method: str, path: str, **kwargs: Any) -> Any:
        return http.request(method, path, headers={"authorization": f"Bearer {secret}"}, **kwargs)

    body = {"filter": {"status": "dead"}}
    refused = await call(reader, "POST", "/v1/tasks/retry", json=body)
    assert refused.status_code == 403
    groups = (await call(reader, "GET", "/v1/dead-letters")).json()
    assert [(g["error"], g["count"]) for g in groups] == [("boom", 3)]  # not beta's
    done = await call(alpha, "POST", "/v1/tasks/retry", json=body)
    assert counts(done) == {"matched": 3, "done": 3}
    assert {(await store.get_task(i)).status for i in mine} == {"queued"}
    assert {(await store.get_task(i)).status for i in theirs} == {"dead"}


# -- chronoq tasks retry / cancel ------------------------------------------------------------
def cli(*args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chronoq.cli", *args],
        cwd=ROOT,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_counts_asks_and_retries_in_batches(tmp_path: Path) -> None:
    dev, url = start_dev(tmp_path)
    try:
        ids = [
            httpx.post(f"{url}/v1/tasks", json={"name": "missing", "max_attempts": 1}).json()["id"]
            for _ in range(5)
        ]
        for task_id in ids:  # no handler and no retry left: dead at once
            wait_status(url, task_id, "dead")
        declined = cli("tasks", "retry", "--status", "dead", "--url", url, answer="n\n")
        assert declined.returncode == 1, declined.stdout + declined.stderr
        assert "5 dead tasks match" in declined.stdout
        assert "Retry 5 tasks? [y/N]" in declined.stdout and "Aborted" in declined.stderr
        assert {httpx.get(f"{url}/v1/tasks/{i}").json()["attempts"] for i in ids} == {1}
        done = cli("tasks", "retry", "--status", "dead", "--batch", "2", "--yes", "--url", url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "5 dead tasks match",
            "retried 2/5",
            "retried 4/5",
            "retried 5/5",
            "retried 5 tasks",
        ]
        for task_id in ids:  # each ran once more (and died again: still no handler)
            wait_status(url, task_id, "dead")
            assert httpx.get(f"{url}/v1/tasks/{task_id}").json()["attempts"] == 2
        one = cli("tasks", "retry", ids[0], "--url", url)  # one task by id still works
        assert one.returncode == 0 and one.stdout.strip() == f"{ids[0]}  queued"
        both = cli("tasks", "cancel", ids[1], "--status", "queued", "--url", url)
        assert both.returncode == 2 and "not both" in both.stderr
        refused = cli("tasks", "cancel", "--status", "dead", "--yes", "--url", url)
        assert refused.returncode == 1
        assert "filter.status: Input should be 'scheduled', 'queued'" in refused.stderr
    finally:
        dev.terminate()


async def test_dead_letters_and_batches_use_the_status_indexes(db_url: str) -> None:
    """The dead-letter GROUP BY and a bulk batch read only the rows of their status, from
    a status index (``tasks_finished`` or ``tasks_by_status``), never the whole table."""
    from chronoq.store import create_store, opened
    from chronoq.store.bulk import _FIRST_LINE
    from chronoq.store.retention import FINISHED

    async with opened(create_store(db_url)) as store:
        await dead(store, 3)
        explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
        line = _FIRST_LINE[store.dialect]
        grouped = (
            f"SELECT {line} AS line, name, queue, count(*) AS n FROM tasks WHERE "
            f"{FINISHED} AND status = $1 GROUP BY {line}, name, queue"
        )
        where, args = TaskFilter(Status.DEAD).where(store.dialect)
        batch = f"SELECT id FROM tasks WHERE {where} AND id > $2 ORDER BY id LIMIT 500"
        async with store.tx() as c:
            if store.dialect == "postgresql":  # the planner needs a table worth an index
                await planner_rows(c, 20_000, 50, "dead", "queued")
            plans = [
                " ".join(str(tuple(r)) for r in await c.fetch(explain + sql, *params))
                for sql, params in ((grouped, ["dead"]), (batch, [*args, "a"]))
            ]
        for plan in plans:
            assert "tasks_finished" in plan or "tasks_by_status" in plan, plan
            assert "SCAN tasks" not in plan and "Seq Scan" not in plan, plan
