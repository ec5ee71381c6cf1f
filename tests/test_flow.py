"""Flow control: unique jobs. A submission with ``unique_for`` made while an equal one waits
or runs returns that task, also when 50 race (one process, one group commit) and when two
stores (two connection pools, as two processes have) race; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from chronoq import App
from chronoq.models import TaskCreate
from chronoq.store import create_store
from chronoq.store.records import INSERT_BATCH, TaskRecord
from tests.conftest import Harness, make_settings, running


def unique_app(db_url: str) -> App:
    app = App(settings=make_settings(db_url))

    @app.task("record", unique_for=60)
    def record(label: str) -> str:
        return label

    @app.task("fail", max_attempts=1)
    def fail(label: str) -> None:
        raise RuntimeError(label)

    @app.task("plain")
    def plain(label: str) -> str:
        return label

    return app


async def rows(h: Harness, name: str) -> list[TaskRecord]:
    found: list[TaskRecord] = await h.store.list_tasks(name=name, limit=1000)
    return found


async def test_fifty_concurrent_duplicates_make_one_task(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        spec = TaskCreate(name="plain", payload={"label": "a", "n": 1}, unique_for=60)
        # the same payload with its keys in another order is the same job
        same = TaskCreate(name="plain", payload={"n": 1, "label": "a"}, unique_for=60)
        now = time.time()
        found = await asyncio.gather(
            *(h.store.create_task(same if i % 2 else spec, now) for i in range(50))
        )
        assert len({record.id for record, _ in found}) == 1
        assert [created for _, created in found].count(True) == 1
        assert len(await rows(h, "plain")) == 1
        assert found[0][0].unique_key is not None


async def test_two_stores_racing_make_one_task(db_url: str) -> None:
    """Two stores have their own connections: only the database's index can settle it."""
    async with running(unique_app(db_url)) as h:
        other = create_store(db_url)
        await other.open()
        try:
            spec = TaskCreate(name="plain", payload={"label": "race"}, unique_for=60)
            now = time.time()
            found = await asyncio.gather(
                *(s.create_task(spec, now) for _ in range(25) for s in (h.store, other))
            )
        finally:
            await other.close()
        assert len({record.id for record, _ in found}) == 1
        assert [created for _, created in found].count(True) == 1
        assert len(await rows(h, "plain")) == 1


async def test_other_payload_key_or_namespace_is_another_task(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        now = time.time()

        async def submit(namespace: str = "default", **spec: Any) -> str:
            record, _ = await h.store.create_task(
                TaskCreate(name="plain", unique_for=60, **spec), now, namespace
            )
            task_id: str = record.id
            return task_id

        a = await submit(payload={"label": "a"})
        assert await submit(payload={"label": "b"}) != a
        assert await submit(payload={"label": "a"}, queue="other") == a  # name + payload
        assert await submit("team", payload={"label": "a"}) != a
        keyed = await submit(payload={"label": "x"}, unique_key="customer:42")
        assert await submit(payload={"label": "y"}, unique_key="customer:42") == keyed
        assert await submit(payload={"label": "a"}, unique_key="customer:43") != a
        # without unique_for, submissions are never deduplicated
        plain = [
            (await h.store.create_task(TaskCreate(name="plain", payload={"label": "a"}), now))[0]
            for _ in range(2)
        ]
        assert plain[0].id != plain[1].id != a
        assert plain[0].unique_key is None


async def test_the_window_ends_and_a_finished_task_gives_its_key_back(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        spec = TaskCreate(name="plain", payload={"label": "w"}, unique_for=5, delay_seconds=3600)
        now = time.time()
        first, created = await h.store.create_task(spec, now)
        assert created
        again, created = await h.store.create_task(spec, now + 4.9)
        assert (again.id, created) == (first.id, False)
        # the window is over: the waiting task runs on, without its key; a new one holds it
        later, created = await h.store.create_task(spec, now + 5.0)
        assert created and later.id != first.id
        assert (await h.store.get_task(first.id)).unique_key is None
        assert (await h.store.get_task(first.id)).status.value == "scheduled"

        # a finished task holds no key: the next equal submission is a new task
        h.start_worker()
        task = await h.submit(name="record", payload={"label": "r"})
        await h.wait_for(task["id"], "succeeded")
        assert (await h.submit(name="record", payload={"label": "r"}))["id"] != task["id"]


async def test_sdk_declaration_and_options(db_url: str) -> None:
    app = unique_app(db_url)
    async with running(app) as h:
        record = app.tasks["record"]
        first = await record.adelay(label="sdk")
        assert (await record.adelay(label="sdk")).id == first.id  # the declaration's window
        keyed = app.tasks["plain"].options(unique_for=30, unique_key="k")
        a = await keyed.adelay(label="one")
        assert (await keyed.adelay(label="two")).id == a.id
        assert a.id != first.id
        assert len(await rows(h, "plain")) == 1
        with pytest.raises(ValueError, match="unique_key needs unique_for"):
            app.tasks["plain"].options(unique_key="k")
        debounced = app.tasks["plain"].options(debounce=60)
        d = await debounced.adelay(label="first")
        assert (await debounced.adelay(label="second")).id == d.id
        assert (await h.store.get_task(d.id)).payload == {"label": "second"}


async def test_rest_returns_the_holder_with_200(harness: Harness) -> None:
    spec = {"name": "chronoq.noop", "payload": {"a": 1}, "unique_for": 60, "delay_seconds": 60}
    first = await harness.http.post("/v1/tasks", json=spec)
    assert first.status_code == 201, first.text
    again = await harness.http.post("/v1/tasks", json={**spec, "payload": {"a": 1}})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["unique_key"] == first.json()["unique_key"]
    batch = await harness.http.post("/v1/tasks/batch", json={"tasks": [spec, spec]})
    assert batch.status_code == 201, batch.text
    assert {t["id"] for t in batch.json()["items"]} == {first.json()["id"]}
    assert batch.json()["created"] == [False, False]


@pytest.mark.parametrize(
    "bad",
    [
        {"unique_for": 0},
        {"unique_for": -1},
        {"unique_for": 31 * 86400},
        {"unique_for": "soon"},
        {"unique_key": "k"},
        {"unique_for": 5, "unique_key": ""},
        {"unique_for": 5, "unique_key": "a\u0000b"},
        {"unique_for": 5, "unique_key": "x" * 201},
    ],
)
async def test_rest_refuses_bad_unique_options(harness: Harness, bad: dict[str, Any]) -> None:
    response = await harness.http.post("/v1/tasks", json={"name": "chronoq.noop", **bad})
    assert response.status_code == 422, response.text


async def test_openapi_documents_unique_options(harness: Harness) -> None:
    schema = (await harness.http.get("/openapi.json")).json()["components"]["schemas"]
    fields = schema["TaskCreate"]["properties"]
    assert {"unique_for", "unique_key"} <= set(fields)
    assert "unique_key" in schema["Task"]["properties"]


async def test_retrying_a_dead_task_gives_up_its_key(db_url: str) -> None:
    """A dead task retried by hand while another holds its key: retried, not a 500."""
    async with running(unique_app(db_url)) as h:
        h.start_worker()
        spec = {"name": "fail", "payload": {"label": "d"}, "unique_for": 60, "max_attempts": 1}
        dead = await h.submit(**spec)
        await h.wait_for(dead["id"], "dead")
        holder = await h.submit(**spec, delay_seconds=3600)
        assert holder["id"] != dead["id"]
        retried = await h.http.post(f"/v1/tasks/{dead['id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["unique_key"] is None
        assert (await h.get(holder["id"]))["unique_key"] is not None


async def test_debounce_the_latest_submission_wins(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        now = time.time()
        found = await asyncio.gather(
            *(
                h.store.create_task(
                    TaskCreate(name="plain", payload={"label": str(i)}, debounce=30), now
                )
                for i in range(20)
            )
        )
        assert len({record.id for record, _ in found}) == 1
        task = await h.store.get_task(found[0][0].id)
        assert task.payload == {"label": "19"}  # the last submitted, in one group commit
        assert task.status.value == "scheduled"
        # a later one pushes the run time back and replaces the payload again
        later, created = await h.store.create_task(
            TaskCreate(name="plain", payload={"label": "last"}, debounce=30), now + 10
        )
        assert (later.id, created) == (task.id, False)
        assert later.payload == {"label": "last"}
        assert later.run_at == pytest.approx(now + 40)
        # a different key is another debounced task
        other, created = await h.store.create_task(
            TaskCreate(name="plain", payload={}, debounce=30, unique_key="k"), now
        )
        assert created and other.id != task.id


async def test_debounce_runs_once_with_the_last_payload(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        h.start_scheduler()
        h.start_worker()
        ids = set()
        for i in range(5):
            task = await h.submit(name="record", payload={"label": f"v{i}"}, debounce=0.5)
            ids.add(task["id"])
        assert len(ids) == 1
        done = await h.wait_for(ids.pop(), "succeeded")
        assert done["result"] == "v4"
        # it came due and ran: the next submission is a new debounced task
        fresh = await h.submit(name="record", payload={"label": "again"}, debounce=0.5)
        assert fresh["id"] != done["id"]
        assert (await h.wait_for(fresh["id"], "succeeded"))["result"] == "again"


async def test_debounce_racing_the_promotion_never_loses_a_submission(db_url: str) -> None:
    """A holder that came due (queued) is not replaced: the submission is a new task."""
    async with running(unique_app(db_url)) as h:
        now = time.time()
        spec = TaskCreate(name="plain", payload={"label": "a"}, debounce=1)
        first, _ = await h.store.create_task(spec, now)
        await h.store.promote_due(now + 2)
        assert (await h.store.get_task(first.id)).status.value == "queued"
        b = TaskCreate(name="plain", payload={"label": "b"}, debounce=1)
        second, created = await h.store.create_task(b, now + 0.5)  # inside the window
        assert created and second.id != first.id
        assert (await h.store.get_task(first.id)).payload == {"label": "a"}
        assert (await h.store.get_task(first.id)).unique_key is None


@pytest.mark.parametrize(
    "bad",
    [
        {"debounce": 0},
        {"debounce": 5, "unique_for": 5},
        {"debounce": 5, "delay_seconds": 5},
        {"debounce": 5, "run_at": "2030-01-01T00:00:00Z"},
        {"debounce": 86401},
        {"unique_for": 5, "unique_key": "debounce:x"},
    ],
)
async def test_rest_refuses_bad_debounce(harness: Harness, bad: dict[str, Any]) -> None:
    response = await harness.http.post("/v1/tasks", json={"name": "chronoq.noop", **bad})
    assert response.status_code == 422, response.text


async def test_a_batch_of_instant_duplicates_stays_bounded(db_url: str) -> None:
    """1,000 equal debounced (or unique) tasks whose window is already over, in one batch:
    one task per statement of INSERT_BATCH (the window is over when the next statement
    finds the first's task), not a retry per duplicate (which once overflowed the stack)."""
    async with running(unique_app(db_url)) as h:
        for spec in (
            TaskCreate(name="plain", debounce=5e-324),
            TaskCreate(name="plain", payload={"x": 1}, unique_for=5e-324),
        ):
            found = await h.store.create_tasks([spec] * 2 * INSERT_BATCH, time.time())
            assert len({record.id for record, _ in found}) == 2
