"""Retention: policies, the leader's continuous purge, `chronoq purge`, the bulk DELETE and
the export of what is purged."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from pydantic import ValidationError

from chronoq import App
from chronoq.api.retention import Purgeable
from chronoq.config import Settings
from chronoq.durations import parse_instant
from chronoq.models import TaskCreate
from chronoq.retention import Policy, PolicyError, Sweeper
from chronoq.scheduler import Scheduler
from chronoq.states import TERMINAL, Status
from chronoq.store import Completion, Store, create_store, opened, tasklogs
from chronoq.store.retention import Expired, delete_batch, finished_queues, pick
from tests.conftest import Harness, make_settings, planner_rows, running
from tests.processes import Proc, cli, free_port, wait_ready, wait_status

DAY = 86400.0


async def finished(
    store: Store,
    status: str,
    *,
    queue: str = "default",
    age: float,
    n: int = 1,
    namespace: str = "default",
    name: str = "job",
) -> list[str]:
    """``n`` tasks that really ran (one attempt each) and ended ``status`` ``age`` seconds
    ago; ``status`` may also be an unfinished one (queued, scheduled) for tasks kept."""
    now = time.time()
    specs = [
        TaskCreate(
            name=name,
            queue=queue,
            max_attempts=1,
            **({"delay_seconds": 3600} if status == "scheduled" else {}),
        )
        for _ in range(n)
    ]
    ids = [t.id for t, _ in await store.create_tasks(specs, now, namespace)]
    if status in ("succeeded", "dead"):
        claimed = await store.claim("w1", queue, n, now, 30)
        assert sorted(t.id for t in claimed) == sorted(ids)
        await store.complete(
            [
                Completion.success(t, now, {"ok": 1})
                if status == "succeeded"
                else Completion.failure(t, now, "failed", "boom")
                for t in claimed
            ]
        )
    elif status == "cancelled":
        for task_id in ids:
            await store.cancel_task(task_id, now)
    async with store.conn() as c:  # back-date: they finished (or were last touched) then
        await c.execute(
            f"UPDATE tasks SET updated_at = $1 WHERE id {store.in_list('$2')}",
            now - age,
            store.list_param(ids),
        )
    for task_id in ids:
        assert (await store.get_task(task_id)).status == status
    return ids


async def present(store: Store) -> set[str]:
    async with store.conn() as c:
        return {r["id"] for r in await c.fetch("SELECT id FROM tasks")}


async def attempt_owners(store: Store) -> set[str]:
    async with store.conn() as c:
        return {r["task_id"] for r in await c.fetch("SELECT task_id FROM attempts")}


async def until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def exported(directory: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(directory.glob("chronoq-purge-*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            lines += [json.loads(line) for line in f]
    return lines


# -- policies -------------------------------------------------------------------------------
def test_policy_defaults_overrides_and_off() -> None:
    default = Policy.parse("")
    assert default.age("any", Status.SUCCEEDED) == 7 * DAY
    assert default.age("any", Status.CANCELLED) == 7 * DAY
    assert default.age("any", Status.DEAD) == 30 * DAY
    policy = Policy.parse(" dead=90d , reports:succeeded=1d,archive:dead=off,cancelled=0")
    assert policy.age("default", Status.DEAD) == 90 * DAY
    assert policy.age("default", Status.SUCCEEDED) == 7 * DAY  # not given: the default
    assert policy.age("default", Status.CANCELLED) is None  # 0 keeps forever
    assert policy.age("reports", Status.SUCCEEDED) == DAY
    assert policy.age("reports", Status.DEAD) == 90 * DAY
    assert policy.age("archive", Status.DEAD) is None
    off = Policy.parse("off")
    assert all(off.age("q", s) is None for s in (Status.SUCCEEDED, Status.CANCELLED, Status.DEAD))
    assert not Sweeper(None, off).enabled  # type: ignore[arg-type]
    assert Settings(retention="succeeded=1h").retention == "succeeded=1h"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dead", "expected [queue:]status=age"),
        ("running=1d", "'running' is not a finished status (use succeeded, cancelled, dead)"),
        ("succeeded=7x", "'7x' is not a duration"),
        ("succeeded=-1d", "is not a duration"),
        (":dead=1d", "the queue name is empty"),
        ("dead=1d,dead=2d", "dead is given twice"),
        ("q:dead=1d,q:dead=off", "dead in queue 'q' is given twice"),
    ],
)
def test_bad_policies_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.parse(text)
    assert message in str(caught.value)
    with pytest.raises(ValidationError) as invalid:
        Settings(retention=text)
    assert message in str(invalid.value)


def test_before_takes_a_time_or_an_age() -> None:
    assert parse_instant("7d", 1e9) == 1e9 - 7 * DAY
    assert parse_instant("90", 1e9) == 1e9 - 90
    assert parse_instant("2030-01-01T00:00:00Z", 0) == 1893456000
    assert parse_instant("2030-01-01T00:00:00", 0) == 1893456000  # UTC unless it says
    assert parse_instant("2030-01-01T02:00:00+02:00", 0) == 1893456000
    for bad in ("yesterday", "-1d", "nan", "1e400", "7x"):
        with pytest.raises(ValueError, match="neither an ISO 8601 time"):
            parse_instant(bad, 0)


# -- the index ----------------------------------------------------------------------------
async def test_purge_batches_walk_the_finished_index(db_url: str) -> None:
    """The batch SELECT and the queue discovery are range scans of ``tasks_finished``
    (the cursor included), not scans of the table."""
    async with opened(create_store(db_url)) as store:
        await finished(store, "succeeded", age=2 * DAY, n=3)
        selection = Expired(Status.SUCCEEDED, "q1", time.time())
        sql, args = pick(store, selection, (0.0, "a"), 1000, "id, updated_at")
        explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
        async with store.tx() as c:
            if store.dialect == "postgresql":  # the planner needs a table worth an index
                await planner_rows(c, 20_000, 10, "queued", "succeeded")
            plan = " ".join(str(tuple(r)) for r in await c.fetch(explain + sql, *args))
        assert "tasks_finished" in plan, plan
        if store.dialect == "sqlite":
            assert "(updated_at,id)>(?,?)" in plan, plan  # the cursor is in the index search
        else:
            # the only filter: workflow nodes are left to their workflows' purge
            assert "ROW(updated_at, id) > ROW(" in plan, plan
            assert plan.count("Filter") == plan.count("Filter: (workflow_id IS NULL)"), plan
        assert "default" in await finished_queues(store, Status.SUCCEEDED)


# -- the leader -----------------------------------------------------------------------------
async def test_leader_purges_expired_finished_tasks_with_attempts(
    harness: Harness, tmp_path: Path
) -> None:
    store = harness.store
    old_ok = await finished(store, "succeeded", age=8 * DAY, n=3)
    old_cancel = await finished(store, "cancelled", age=8 * DAY)
    old_dead = await finished(store, "dead", age=31 * DAY, n=2)
    young_dead = await finished(store, "dead", age=20 * DAY)  # dead: kept 30 days
    young_ok = await finished(store, "succeeded", age=6 * DAY)
    waiting = await finished(store, "scheduled", age=60 * DAY)  # unfinished: never purged
    queued = await finished(store, "queued", age=60 * DAY)
    reports_old = await finished(store, "succeeded", queue="reports", age=2 * DAY)
    reports_young = await finished(store, "succeeded", queue="reports", age=3600)
    archive = await finished(store, "dead", queue="archive", age=400 * DAY)
    expired = set(old_ok + old_cancel + old_dead + reports_old)
    kept = set(young_dead + young_ok + waiting + queued + reports_young + archive)
    assert {*old_ok, *old_dead, *young_dead} <= await attempt_owners(store)

    sweeper = Sweeper(
        store,
        Policy.parse("reports:succeeded=1d,archive:dead=off"),
        interval=0.1,
        batch=2,
        pause=0,
        export_dir=str(tmp_path / "out"),
    )
    scheduler = Scheduler(store, poll_seconds=0.1, retention=sweeper)
    job = asyncio.create_task(scheduler.run())
    try:

        async def purged() -> bool:
            return not (await present(store)) & expired

        await until(purged)
        await asyncio.sleep(0.3)  # a few more sweeps: still nothing else goes
    finally:
        scheduler.stop()
        await job
    assert await present(store) == kept
    owners = await attempt_owners(store)
    assert not owners & expired and {*young_dead, *young_ok} <= owners
    assert sweeper.purged == len(expired) and sweeper.sweeps >= 2

    lines = exported(tmp_path / "out")
    assert sorted(t["id"] for t in lines) == sorted(expired)  # exactly the deleted ones
    by_id = {t["id"]: t for t in lines}
    assert by_id[old_dead[0]]["status"] == "dead"
    [attempt] = by_id[old_dead[0]]["attempt_history"]
    assert attempt["outcome"] == "failed" and attempt["error"] == "boom"
    assert by_id[old_ok[0]]["attempt_history"][0]["result"] == {"ok": 1}
    assert by_id[old_cancel[0]]["attempt_history"] == []


async def test_a_deleted_task_takes_its_attempts_logs_and_progress(db_url: str) -> None:
    """However a task is deleted (a purge batch, DELETE /v1/tasks/{id}), its attempts, logs
    and progress go with it (PostgreSQL: one statement-level trigger, migration 0025), and a
    log or progress write for a task already gone inserts nothing."""
    async with opened(create_store(db_url)) as store:
        purged = await finished(store, "succeeded", age=10 * DAY, n=3)
        discarded = await finished(store, "dead", age=DAY)
        kept = await finished(store, "succeeded", age=DAY)
        everyone = [*purged, *discarded, *kept]
        now = time.time()
        await tasklogs.write(
            store,
            [tasklogs.Chunk(t, 1, 1, now, [(now, "stdout", "hi")]) for t in everyone],
            [tasklogs.Step(t, 1, 0.5, "half", now) for t in everyone],
        )
        n, _ = await delete_batch(
            store, Expired(Status.SUCCEEDED, "default", now - 7 * DAY), None, 10
        )
        assert n == 3
        await store.delete_task(discarded[0])
        async with store.conn() as c:
            for table in ("attempts", "task_logs", "task_progress"):
                rows = await c.fetch(f"SELECT DISTINCT task_id FROM {table}")
                assert {r["task_id"] for r in rows} == set(kept), table
        await tasklogs.write(
            store,
            [tasklogs.Chunk(purged[0], 1, 2, now, [(now, "stdout", "late")])],
            [tasklogs.Step(purged[0], 1, 1.0, None, now)],
        )
        async with store.conn() as c:
            for table in ("task_logs", "task_progress"):
                rows = await c.fetch(f"SELECT task_id FROM {table} WHERE task_id = $1", purged[0])
                assert not rows, table


async def test_a_follower_does_not_purge(harness: Harness) -> None:
    store = harness.store
    old = await finished(store, "succeeded", age=8 * DAY)
    assert await store.leases.try_take("scheduler", "someone-else", time.time(), 60) is not None
    sweeper = Sweeper(store, Policy.parse(""), interval=0.05, pause=0)
    scheduler = Scheduler(store, poll_seconds=0.05, retention=sweeper)
    job = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.5)
    scheduler.stop()
    await job
    assert not scheduler.leaderships and sweeper.sweeps == 0
    assert set(old) <= await present(store)


def test_dev_process_leader_purges_and_exports(tmp_path: Path, procs: list[Proc]) -> None:
    """A real `chronoq dev`: its leader purges a succeeded task once expired, exporting it
    first, and the bulk DELETE works over real HTTP."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_RETENTION": "succeeded=2s,cancelled=off,dead=off",
        "CHRONOQ_RETENTION_INTERVAL": "0.2",
        "CHRONOQ_RETENTION_EXPORT_DIR": str(tmp_path / "exported"),
    }
    dev = Proc(
        [
            "dev",
            "--demo",
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp_path / 'dev.db'}",
        ],
        env,
        tmp_path / "dev.log",
    )
    procs.append(dev)
    wait_ready(url, dev)
    task = httpx.post(
        f"{url}/v1/tasks", json={"name": "demo.add", "payload": {"a": 1, "b": 2}}
    ).json()
    assert wait_status(url, task["id"], "succeeded")["result"] == 3
    later = httpx.post(
        f"{url}/v1/tasks",
        json={"name": "demo.add", "delay_seconds": 600, "payload": {"a": 1, "b": 2}},
    ).json()
    httpx.post(f"{url}/v1/tasks/{later['id']}/cancel").raise_for_status()
    deadline = time.monotonic() + 15
    while httpx.get(f"{url}/v1/tasks/{task['id']}").status_code != 404:
        assert time.monotonic() < deadline, dev.output()
        time.sleep(0.1)
    assert task["id"] in {t["id"] for t in exported(tmp_path / "exported")}

    params = {"status": "cancelled", "before": "0"}
    counted = httpx.delete(f"{url}/v1/tasks", params={**params, "dry_run": "true"})
    assert counted.json() == {"matched": 1, "deleted": 0}  # the leader keeps cancelled ones
    assert httpx.delete(f"{url}/v1/tasks", params=params).json()["deleted"] == 1
    assert httpx.get(f"{url}/v1/tasks/{later['id']}").status_code == 404
    assert dev.terminate() == 0
    assert "retention purged" in dev.output()


# -- chronoq purge --------------------------------------------------------------------------
async def test_purge_cli_dry_run_then_purge_with_export(db_url: str, tmp_path: Path) -> None:
    async with opened(create_store(db_url)) as store:
        ok = await finished(store, "succeeded", age=8 * DAY, n=1500)  # more than one batch
        dead = await finished(store, "dead", age=2 * DAY, n=2, queue="q2")
        young = await finished(store, "succeeded", age=3600, n=2)
        running = await finished(store, "queued", age=9 * DAY)

    dry = cli("purge", "--dry-run", "--json", "--database-url", db_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "total": 1500,
        "items": [{"status": "succeeded", "queue": "default", "count": 1500}],
    }  # the policy: dead kept
    text = cli("purge", "--dry-run", "--before", "1d", "--database-url", db_url)
    assert text.returncode == 0, text.stderr
    assert "would delete 1,502 finished tasks" in text.stdout
    assert "dead" in text.stdout and "q2" in text.stdout
    one = cli(
        "purge",
        "--dry-run",
        "--json",
        "--status",
        "dead",
        "--queue",
        "q2",
        "--before",
        "2030-01-01T00:00:00Z",
        "--database-url",
        db_url,
    )
    assert json.loads(one.stdout)["total"] == 2

    bad = cli("purge", "--before", "yesterday", "--database-url", db_url)
    assert bad.returncode == 2 and "neither an ISO 8601 time" in bad.stderr
    policy = cli(
        "purge",
        "--dry-run",
        "--database-url",
        db_url,
        env={"CHRONOQ_RETENTION": "succeeded=7d,running=1d"},
    )
    assert policy.returncode == 1 and "Traceback" not in policy.stderr
    assert (
        "CHRONOQ_RETENTION: retention entry 'running=1d': 'running' is not a finished status"
    ) in policy.stderr

    out = tmp_path / "export"
    done = cli(
        "purge", "--before", "1d", "--batch", "500", "--export", str(out), "--database-url", db_url
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 1,502 finished tasks" in done.stdout
    assert "exported 1,502 tasks to" in done.stderr
    async with opened(create_store(db_url)) as store:
        assert await present(store) == {*young, *running}
        assert await attempt_owners(store) == set(young)
    lines = exported(out)
    assert sorted(t["id"] for t in lines) == sorted(ok + dead)
    assert all(len(t["attempt_history"]) == 1 for t in lines)
    again = cli("purge", "--before", "1d", "--database-url", db_url)
    assert "deleted 0 finished tasks" in again.stdout


# -- DELETE /v1/tasks -----------------------------------------------------------------------
@pytest.fixture
async def secured(db_url: str) -> Any:
    async with running(App(settings=make_settings(db_url, auth=True))) as harness:
        yield harness


async def test_bulk_delete_respects_namespaces_and_scopes(secured: Harness) -> None:
    store, http = secured.store, secured.http
    _, alpha = await store.keys.create("alpha", ["write"], namespace="alpha")
    _, beta = await store.keys.create("beta", ["write"], namespace="beta")
    _, reader = await store.keys.create("reader", ["read"])
    _, admin = await store.keys.create("ops", ["admin"])
    mine = await finished(store, "succeeded", age=2 * DAY, n=3, namespace="alpha")
    mine_other = await finished(
        store, "succeeded", age=2 * DAY, namespace="alpha", name="other", queue="q2"
    )
    theirs = await finished(store, "succeeded", age=2 * DAY, n=2, namespace="beta")
    fresh = await finished(store, "succeeded", age=60, namespace="alpha")

    def purge(secret: str, **params: Any) -> Any:
        return http.delete(
            "/v1/tasks", params=params, headers={"authorization": f"Bearer {secret}"}
        )

    dry = await purge(alpha, status="succeeded", before="1d", dry_run="true")
    assert dry.status_code == 200 and dry.json() == {"matched": 4, "deleted": 0}
    assert set(mine + mine_other + theirs + fresh) == await present(store)
    named = await purge(alpha, status="succeeded", before="1d", name="other", queue="q2")
    assert named.json() == {"matched": 1, "deleted": 1}
    done = await purge(alpha, status="succeeded", before="1d")
    assert done.status_code == 200 and done.json() == {"matched": 3, "deleted": 3}
    assert await present(store) == {*theirs, *fresh}  # beta's are untouched
    assert (await purge(beta, status="succeeded", before="1m", dry_run="true")).json() == {
        "matched": 2,
        "deleted": 0,
    }  # alpha's fresh one is not beta's to see
    assert (await purge(beta, status="succeeded", before="1d")).json()["deleted"] == 2
    assert await present(store) == set(fresh)

    assert (await purge(reader, status="succeeded", before="1d")).status_code == 403
    for params, field in [
        ({"status": "running", "before": "1d"}, "status"),
        ({"status": "queued", "before": "1d"}, "status"),
        ({"status": "succeeded", "before": "last week"}, "before"),
        ({"status": "bogus", "before": "1d"}, "status"),
        ({"before": "1d"}, "status"),
        ({"status": "dead"}, "before"),
    ]:
        refused = await purge(alpha, **params)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.json()["error"]["details"][0]["field"] == field, refused.text
    everything = await purge(
        admin, status="succeeded", before=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    )
    assert everything.json()["deleted"] == 1  # no namespace: alpha's fresh one too
    assert await present(store) == set()


def test_the_schema_names_exactly_the_finished_statuses() -> None:
    """DELETE /v1/tasks states its statuses in OpenAPI (schema-valid requests succeed)."""
    assert {Status(s) for s in get_args(Purgeable)} == TERMINAL
