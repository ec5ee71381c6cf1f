"""Group commit: concurrent submissions share one INSERT, and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from chronoq import App
from chronoq.batching import GroupCommit
from chronoq.models import TaskCreate
from chronoq.states import Status
from chronoq.store.records import NewTask
from tests.conftest import Harness, make_settings, running


async def test_calls_during_a_write_go_out_together_in_order() -> None:
    writes: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int]:
        writes.append(list(items))
        if len(writes) == 1:
            await gate.wait()  # hold the first write while the others queue up
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=4)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(commit.submit(i)) for i in range(1, 10)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 10)]
    assert writes == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]  # alone when idle, then batched


async def test_a_failed_write_fails_its_callers_only() -> None:
    async def write(items: Sequence[int]) -> list[int]:
        if 3 in items:
            raise ValueError("boom")
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=1)
    results = await asyncio.gather(*(commit.submit(i) for i in range(5)), return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, 1, 2, "boom", 4]
    assert await commit.submit(7) == 7  # the writer recovers


async def test_a_bad_item_fails_alone_when_the_error_says_so() -> None:
    writes: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int]:
        writes.append(list(items))
        if 0 in items:
            await gate.wait()  # hold the first write while the others queue up
        if 3 in items:
            raise ValueError("row 3 is bad")
        if -1 in items:
            raise ConnectionError("database down")
        return list(items)

    async def behind_a_write(items: Sequence[int]) -> list[int | BaseException]:
        gate.clear()
        blocker = asyncio.create_task(commit.submit(0))
        await asyncio.sleep(0)
        calls = [asyncio.create_task(commit.submit(i)) for i in items]
        await asyncio.sleep(0)
        gate.set()
        assert await blocker == 0
        return await asyncio.gather(*calls, return_exceptions=True)

    commit: GroupCommit[int, int] = GroupCommit(
        write, split=lambda exc: isinstance(exc, ValueError)
    )
    results = await behind_a_write([1, 2, 3, 4])
    assert [r if isinstance(r, int) else str(r) for r in results] == [1, 2, "row 3 is bad", 4]
    assert writes == [[0], [1, 2, 3, 4], [1], [2], [3], [4]]
    writes.clear()
    down = await behind_a_write([-1, 5])
    assert all(isinstance(r, ConnectionError) for r in down)  # an outage: no one-by-one
    assert writes == [[0], [-1, 5]]


async def test_one_unstorable_submission_does_not_fail_the_others(app: App) -> None:
    """A value the database refuses (NUL in text, on PostgreSQL; the API's validation
    rejects it first) fails only its own call, not the concurrent ones batched with it."""
    async with app:
        bad = TaskCreate.model_construct(
            **{**TaskCreate(name="t").__dict__, "idempotency_key": "a\x00b"}
        )
        specs = [TaskCreate(name="t", payload={"i": i}) for i in range(20)]
        specs.insert(7, bad)
        results = await asyncio.gather(
            *(app.store.create_task(s, 1.0) for s in specs), return_exceptions=True
        )
        good = [r for i, r in enumerate(results) if i != 7]
        assert all(isinstance(r, tuple) and r[1] for r in good)
        if app.settings.database_url.startswith("postgresql"):
            assert isinstance(results[7], Exception)
        assert len(await app.store.list_tasks(limit=100)) == 20 + (
            not isinstance(results[7], Exception)
        )


async def test_concurrent_submissions_are_each_stored_once(app: App) -> None:
    """300 concurrent create_task calls, 100 of them sharing 20 idempotency keys: 220
    tasks, every duplicate gets the first task back, in far fewer statements than calls."""
    async with app:
        store = app.store
        writes = 0
        write = store._inserts._write

        async def counting(rows: Sequence[NewTask]) -> object:
            nonlocal writes
            writes += 1
            return await write(rows)

        store._inserts._write = counting  # type: ignore[assignment]
        specs = [
            TaskCreate(
                name="t", payload={"i": i}, idempotency_key=f"k{i % 20}" if i % 3 == 0 else None
            )
            for i in range(300)
        ]
        results = await asyncio.gather(*(store.create_task(s, 1.0) for s in specs))
        created = [r for r, new in results if new]
        assert len(created) == 200 + 20
        by_key: dict[str, set[str]] = {}
        for spec, (record, _) in zip(specs, results, strict=True):
            assert record.name == "t"
            if spec.idempotency_key:
                by_key.setdefault(spec.idempotency_key, set()).add(record.id)
            else:
                assert record.payload == spec.payload
        assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 20
        assert len(await store.list_tasks(limit=1000)) == 220
        assert writes < 30, writes


async def test_create_tasks_in_bulk(app: App) -> None:
    async with app:
        specs = [TaskCreate(name="bulk", payload={"i": i}) for i in range(1203)]
        results = await app.store.create_tasks(specs, 1.0)
        assert [r.payload["i"] for r, _ in results] == list(range(1203))
        assert all(created for _, created in results)
        again = await app.store.create_tasks(
            [TaskCreate(name="bulk", idempotency_key="same")] * 3, 1.0
        )
        assert [c for _, c in again] == [True, False, False]
        assert len({r.id for r, _ in again}) == 1


async def test_a_batch_of_due_tasks_wakes_workers_not_this_process_scheduler(app: App) -> None:
    async with app:
        planned = app.store.hub.schedule_event()
        ready = app.store.hub.ready_event(["default"])
        await asyncio.sleep(0.3)  # PostgreSQL: the LISTENs are done, and their wake-up
        planned.clear()
        ready.clear()
        await app.store.create_tasks([TaskCreate(name="now")] * 3, 1.0)
        assert ready.is_set() and not planned.is_set()
        await app.store.create_tasks([TaskCreate(name="later", delay_seconds=60)] * 2, 1.0)
        assert planned.is_set()


@pytest.mark.parametrize("n", [1, 2])
async def test_a_cancelled_caller_does_not_break_the_others(app: App, n: int) -> None:
    async with app:
        calls = [
            asyncio.create_task(app.store.create_task(TaskCreate(name=f"c{i}"), 1.0))
            for i in range(10)
        ]
        for call in calls[:n]:
            call.cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(d, tuple) for d in done[n:])


async def test_batch_api_submits_all_in_order_and_they_run(app: App, harness: Harness) -> None:
    ran: list[int] = []

    @app.task("item")
    def item(i: int) -> int:
        ran.append(i)
        return i

    harness.start_worker()
    first = await harness.http.post(
        "/v1/tasks/batch",
        json={
            "tasks": [
                {"name": "item", "payload": {"i": i}, "idempotency_key": f"b{i}"} for i in range(3)
            ]
        },
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert [t["payload"]["i"] for t in body["items"]] == [0, 1, 2]
    assert body["created"] == [True, True, True]
    again = (
        await harness.http.post(
            "/v1/tasks/batch",
            json={
                "tasks": [
                    {"name": "item", "payload": {"i": 1}, "idempotency_key": "b1"},
                    {"name": "item", "payload": {"i": 3}},
                ]
            },
        )
    ).json()
    assert again["created"] == [False, True]
    assert again["items"][0]["id"] == body["items"][1]["id"]
    for task in [*body["items"], again["items"][1]]:
        await harness.wait_for(task["id"], "succeeded")
    assert sorted(ran) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("tasks", "status", "field"),
    [
        ([], 422, "tasks"),
        ([{"name": "x"}] * 1001, 422, "tasks"),
        ([{"name": "x"}, {"name": "bad name"}], 422, "tasks.1.name"),
        (
            [{"name": "x"}, {"name": "x", "payload": {"blob": "x" * 300_000}}],
            413,
            "tasks.1.payload",
        ),
    ],
)
async def test_a_bad_batch_is_refused_whole(
    harness: Harness, tasks: list[dict[str, object]], status: int, field: str
) -> None:
    response = await harness.http.post("/v1/tasks/batch", json={"tasks": tasks})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert field in [d["field"] for d in error["details"]], error
    assert (await harness.http.get("/v1/tasks")).json()["items"] == []


async def test_batch_keys_are_per_namespace(db_url: str) -> None:
    """Another namespace's idempotency key is no conflict (and reveals nothing): the batch
    makes its own task for it."""
    async with running(App(settings=make_settings(db_url, auth=True))) as harness:
        _, alpha = await harness.store.keys.create("alpha", ["write"], namespace="alpha")
        _, beta = await harness.store.keys.create("beta", ["write"], namespace="beta")
        taken = await harness.http.post(
            "/v1/tasks",
            json={"name": "x", "idempotency_key": "k"},
            headers={"authorization": f"Bearer {alpha}"},
        )
        assert taken.status_code == 201
        response = await harness.http.post(
            "/v1/tasks/batch",
            json={"tasks": [{"name": "y"}, {"name": "x", "idempotency_key": "k"}]},
            headers={"authorization": f"Bearer {beta}"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["created"] == [True, True]
        mine = response.json()["items"][1]
        assert mine["namespace"] == "beta" and mine["id"] != taken.json()["id"]
        assert sorted(t.name for t in await harness.store.list_tasks()) == ["x", "x", "y"]


async def test_delay_many_from_python(app: App) -> None:
    @app.task("many")
    def many(n: int) -> None: ...

    async with app:
        tasks = await many.adelay_many({"n": n} for n in range(5))
        assert [t.payload["n"] for t in tasks] == list(range(5))
        assert {t.status for t in tasks} == {Status.QUEUED}
        sync = await asyncio.to_thread(many.delay_many, [{"n": 9}])  # from a sync thread
        assert sync[0].payload == {"n": 9}
        assert len(await app.store.list_tasks()) == 6
