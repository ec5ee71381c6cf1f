"""Namespaces are isolated for names: schedule names and idempotency keys are unique per
namespace, a look-up finds only the caller's rows, and no error tells of another's."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from chronoq import App
from chronoq.models import ScheduleCreate, TaskCreate, TaskTemplate
from chronoq.store import create_store
from chronoq.store.records import TASK_COLUMNS, NewTask
from chronoq.store.schedules import ScheduleRecord
from tests.conftest import Harness, make_settings, running

#: task columns added after migration 10
LATER = {
    "unique_key",
    "unique_until",
    "traceparent",
    "concurrency_key",
    "concurrency_limit",
    "rate_interval",
}
#: schedule columns added after version 10
SCHEDULE_LATER = {"overlap_policy", "workflow"}

NIGHTLY = {"name": "nightly", "cron": "@daily", "task": {"name": "report"}}


@dataclass
class Tenants:
    """An API with keys on, and the headers of two namespaces' keys and an unscoped one."""

    harness: Harness
    alpha: dict[str, str]
    beta: dict[str, str]
    admin: dict[str, str]

    async def call(
        self, who: dict[str, str], method: str, path: str, body: Any = None
    ) -> httpx.Response:
        return await self.harness.http.request(method, path, json=body, headers=who)


@pytest.fixture
async def tenants(db_url: str) -> AsyncIterator[Tenants]:
    async with running(App(settings=make_settings(db_url, auth=True))) as harness:
        headers = []
        for name, scope, namespace in [
            ("a", "write", "alpha"),
            ("b", "write", "beta"),
            ("ops", "admin", None),
        ]:
            _, secret = await harness.store.keys.create(name, [scope], namespace=namespace)
            headers.append({"authorization": f"Bearer {secret}"})
        yield Tenants(harness, *headers)


async def test_same_schedule_name_in_two_namespaces(tenants: Tenants) -> None:
    t = tenants
    mine = await t.call(t.alpha, "POST", "/v1/schedules", NIGHTLY)
    theirs = await t.call(t.beta, "POST", "/v1/schedules", {**NIGHTLY, "cron": "@hourly"})
    assert (mine.status_code, theirs.status_code) == (201, 201), theirs.text
    alpha_id, beta_id = mine.json()["id"], theirs.json()["id"]
    again = await t.call(t.beta, "POST", "/v1/schedules", NIGHTLY)
    assert again.status_code == 409 and again.json()["error"]["code"] == "schedule_exists"

    # each namespace's name finds its own schedule, and changes touch only that one
    assert (await t.call(t.alpha, "GET", "/v1/schedules/nightly")).json()["id"] == alpha_id
    assert (await t.call(t.beta, "GET", "/v1/schedules/nightly")).json()["cron"] == "@hourly"
    paused = await t.call(t.beta, "POST", "/v1/schedules/nightly/pause")
    assert paused.json()["id"] == beta_id and paused.json()["paused"]
    assert not (await t.call(t.alpha, "GET", f"/v1/schedules/{alpha_id}")).json()["paused"]
    patched = await t.call(t.alpha, "PATCH", "/v1/schedules/nightly", {"cron": "@weekly"})
    assert patched.json()["id"] == alpha_id
    assert (await t.call(t.beta, "GET", f"/v1/schedules/{beta_id}")).json()["cron"] == "@hourly"
    run = (await t.call(t.beta, "POST", "/v1/schedules/nightly/trigger")).json()
    assert run["schedule_id"] == beta_id and run["namespace"] == "beta"
    runs = (await t.call(t.alpha, "GET", "/v1/schedules/nightly/runs")).json()
    assert runs["items"] == []

    # another namespace's id is a 404 like any unknown id, and nothing names its owner
    for method, path in [
        ("GET", ""),
        ("PATCH", ""),
        ("POST", "/pause"),
        ("POST", "/trigger"),
        ("GET", "/runs"),
        ("DELETE", ""),
    ]:
        answer = await t.call(
            t.beta,
            method,
            f"/v1/schedules/{alpha_id}{path}",
            {"paused": True} if method == "PATCH" else None,
        )
        assert answer.status_code == 404, (method, path, answer.text)
        assert "alpha" not in answer.text
    listed = (await t.call(t.beta, "GET", "/v1/schedules")).json()["items"]
    assert [s["id"] for s in listed] == [beta_id]

    # a key of every namespace sees both: the bare name is ambiguous, ids are not, and
    # pages of one go through both schedules of the same name
    ambiguous = await t.call(t.admin, "GET", "/v1/schedules/nightly")
    assert ambiguous.status_code == 409, ambiguous.text
    assert ambiguous.json()["error"]["code"] == "ambiguous_name"
    assert "alpha, beta" in ambiguous.json()["error"]["message"]
    assert (await t.call(t.admin, "GET", f"/v1/schedules/{beta_id}")).json()["paused"]
    seen, cursor = [], None
    while True:
        page = (
            await t.harness.http.get(
                "/v1/schedules",
                headers=t.admin,
                params={"limit": 1, **({"cursor": cursor} if cursor else {})},
            )
        ).json()
        seen += [s["id"] for s in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == sorted([alpha_id, beta_id])

    deleted = await t.call(t.beta, "DELETE", "/v1/schedules/nightly")
    assert deleted.status_code == 204
    assert (await t.call(t.alpha, "GET", "/v1/schedules/nightly")).json()["id"] == alpha_id
    assert (await t.call(t.admin, "GET", "/v1/schedules/nightly")).json()["id"] == alpha_id


async def test_names_shaped_like_ids_are_refused(tenants: Tenants) -> None:
    t = tenants
    mine = (await t.call(t.alpha, "POST", "/v1/schedules", NIGHTLY)).json()
    for name in [mine["id"], str(uuid.uuid4()), str(uuid.uuid4()).upper()]:
        refused = await t.call(t.beta, "POST", "/v1/schedules", {**NIGHTLY, "name": name})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"][0]["field"] == "name"
        assert "shaped like an id" in refused.json()["error"]["message"]
    # so an id is always an id: alpha's schedule stays reachable by its id
    assert (await t.call(t.alpha, "GET", f"/v1/schedules/{mine['id']}")).status_code == 200
    app = App(settings=make_settings("sqlite:///:memory:"))
    with pytest.raises(ValueError, match="shaped like an id"):
        app.periodic(cron="@daily", name="job", schedule_name=str(uuid.uuid4()))(lambda: None)


async def test_same_idempotency_key_in_two_namespaces(tenants: Tenants) -> None:
    t = tenants
    task = {"name": "x", "idempotency_key": "k1"}
    first = await t.call(t.alpha, "POST", "/v1/tasks", task)
    other = await t.call(t.beta, "POST", "/v1/tasks", task)
    assert (first.status_code, other.status_code) == (201, 201), other.text
    assert first.json()["id"] != other.json()["id"]
    assert other.json()["namespace"] == "beta"
    for who, original in [(t.alpha, first.json()), (t.beta, other.json())]:
        repeat = await t.call(who, "POST", "/v1/tasks", task)
        assert repeat.status_code == 200 and repeat.json()["id"] == original["id"]
    batch = await t.call(
        t.beta, "POST", "/v1/tasks/batch", {"tasks": [task, {"name": "x", "idempotency_key": "k2"}]}
    )
    assert batch.status_code == 201, batch.text
    assert batch.json()["created"] == [False, True]
    assert batch.json()["items"][0]["id"] == other.json()["id"]
    [(gamma, created)] = await t.harness.store.create_tasks(
        [TaskCreate(**task)], time.time(), namespace="gamma"
    )
    assert created and gamma.namespace == "gamma"

    # submitted at the same moment, the group commit writes both namespaces' rows in one
    # statement: each namespace still gets its own task, and a repeat its own first one
    same = {"name": "x", "idempotency_key": "together"}
    answers = await asyncio.gather(
        *[t.call(who, "POST", "/v1/tasks", same) for who in [t.alpha, t.beta, t.alpha, t.beta]]
    )
    by_namespace: dict[str, set[str]] = {}
    for answer in answers:
        by_namespace.setdefault(answer.json()["namespace"], set()).add(answer.json()["id"])
    assert {ns: len(ids) for ns, ids in by_namespace.items()} == {"alpha": 1, "beta": 1}
    assert sorted(a.status_code for a in answers) == [200, 200, 201, 201]


async def test_migration_keeps_rows_and_makes_names_per_namespace(db_url: str) -> None:
    """A database at version 10, with tasks, attempts and schedules, upgraded to 11."""
    store = create_store(db_url)
    await store.open()
    try:
        await store.applied_migrations()
        for version, name, sql in store.migrations():
            if version <= 10:
                await store.apply_migration(version, name, sql)
        now = time.time()
        task = NewTask.of(TaskTemplate(name="old"), now, now, "k1", namespace="alpha")
        nightly = ScheduleRecord.new(ScheduleCreate.model_validate(NIGHTLY), now, "alpha")
        # values() order; the columns migrations 0021 and 0023 added left out
        columns = [f.name for f in dataclasses.fields(ScheduleRecord) if f.name != "buffered_slot"]
        old_schedule = [
            (k, v)
            for k, v in zip(columns, nightly.values(), strict=True)
            if k not in SCHEDULE_LATER
        ]
        async with store.conn() as c:
            await c.execute(
                f"INSERT INTO schedules ({', '.join(k for k, _ in old_schedule)}) VALUES "
                f"({', '.join(f'${i}' for i in range(1, len(old_schedule) + 1))})",
                *(v for _, v in old_schedule),
            )
            # the columns a version-10 table has (migration 0018 added the unique keys)
            kept = [
                (k, v) for k, v in zip(TASK_COLUMNS, task.values(), strict=True) if k not in LATER
            ]
            await c.execute(
                f"INSERT INTO tasks ({', '.join(k for k, _ in kept)}) VALUES "
                f"({', '.join(f'${i}' for i in range(1, len(kept) + 1))})",
                *(v for _, v in kept),
            )
            await c.execute(
                "INSERT INTO attempts (task_id, attempt, worker_id, started_at) "
                "VALUES ($1, 1, 'w', $2)",
                task.id,
                now,
            )
        assert 11 in await store.migrate()
        old = await store.get_task(task.id)
        assert (old.idempotency_key, old.namespace) == ("k1", "alpha")
        assert len(await store.get_attempts(task.id)) == 1
        spec = TaskCreate(name="new", idempotency_key="k1")
        again, created = await store.create_task(spec, now, "alpha")
        assert not created and again.id == task.id
        beta, created = await store.create_task(spec, now, "beta")
        assert created and beta.id != task.id
        assert (await store.schedules.get("nightly")).id == nightly.id
        theirs = await store.schedules.create(ScheduleCreate.model_validate(NIGHTLY), now, "beta")
        assert (await store.schedules.get("nightly", "alpha")).id == nightly.id
        assert (await store.schedules.get("nightly", "beta")).id == theirs.id
        async with store.conn() as c:  # attempts still belong to tasks: deleting cascades
            await c.execute("DELETE FROM tasks WHERE id = $1", task.id)
            left = await c.fetch("SELECT count(*) AS n FROM attempts")
        assert left[0]["n"] == 0
    finally:
        await store.close()
