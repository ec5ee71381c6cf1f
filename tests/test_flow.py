"""Flow control: unique jobs. A submission with ``unique_for`` made while an equal one waits
or runs returns that task, also when 50 race (one process, one group commit) and when two
stores (two connection pools, as two processes have) race; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from chronoq import App, render
from chronoq.models import ScheduleCreate, TaskCreate
from chronoq.scheduler import Scheduler
from chronoq.store import create_store
from chronoq.store.records import INSERT_BATCH, Completion, TaskRecord
from tests.conftest import Harness, make_settings, running
from tests.processes import Proc, cli, start_dev


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


# -- schedule overlap policies ------------------------------------------------------------------
def every_ten(policy: str, name: str = "ov") -> ScheduleCreate:
    return ScheduleCreate.model_validate(
        {
            "name": f"{name}-{policy}",
            "interval_seconds": 10,
            "task": {"name": "plain", "payload": {"label": policy}},
            "overlap_policy": policy,
            "misfire_policy": "catch_up",
        }
    )


async def fired_runs(h: Harness, schedule_id: str) -> list[TaskRecord]:
    found = await h.store.list_tasks(name="plain", limit=1000)
    return sorted((t for t in found if t.schedule_id == schedule_id), key=lambda t: t.slot or 0)


async def test_overlap_allow_and_skip(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        t0 = time.time() - 1000
        allow = await h.store.schedules.create(every_ten("allow"), t0)
        skip = await h.store.schedules.create(every_ten("skip"), t0)
        first = allow.next_fire_at
        assert first is not None and skip.next_fire_at == first
        assert await h.store.schedules.fire_due(first) == 2
        # the first runs still wait: allow fires the next slot, skip does not
        assert await h.store.schedules.fire_due(first + 10) == 1
        assert len(await fired_runs(h, allow.id)) == 2
        (run,) = await fired_runs(h, skip.id)
        moved = await h.store.schedules.get(skip.id)
        assert moved.next_fire_at == first + 20 and moved.last_fire_at == first + 10
        # once the previous run ended, the next slot fires again
        await h.store.cancel_task(run.id, first + 11)
        assert await h.store.schedules.fire_due(first + 20) == 2
        assert [r.slot for r in await fired_runs(h, skip.id)] == [first, first + 20]
        # catch-up of several slots under skip: one of them only
        assert await h.store.schedules.fire_due(first + 50) == 3  # allow: 30, 40, 50; skip: 0
        assert len(await fired_runs(h, skip.id)) == 2


async def test_overlap_buffer_one(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        t0 = time.time() - 1000
        schedule = await h.store.schedules.create(every_ten("buffer_one"), t0)
        first = schedule.next_fire_at
        assert first is not None
        assert await h.store.schedules.fire_due(first) == 1
        (run,) = await fired_runs(h, schedule.id)
        # two slots while the run waits: the first is buffered, the second dropped
        assert await h.store.schedules.fire_due(first + 10) == 0
        assert await h.store.schedules.fire_due(first + 20) == 0
        held = await h.store.schedules.get(schedule.id)
        assert held.buffered_slot == first + 10 and held.next_fire_at == first + 30
        assert held.to_api().buffered_slot is not None
        # not due, but the previous run ended: the buffered slot fires now
        await h.store.cancel_task(run.id, first + 21)
        assert await h.store.schedules.fire_due(first + 22) == 1
        runs = await fired_runs(h, schedule.id)
        assert [r.slot for r in runs] == [first, first + 10]
        assert runs[1].run_at == first + 22
        assert (await h.store.schedules.get(schedule.id)).buffered_slot is None
        assert await h.store.schedules.fire_due(first + 23) == 0  # fired once only


async def test_overlap_cancel_running(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        t0 = time.time() - 1000
        schedule = await h.store.schedules.create(every_ten("cancel_running"), t0)
        first = schedule.next_fire_at
        assert first is not None
        assert await h.store.schedules.fire_due(first) == 1
        (claimed,) = await h.store.claim("w1", "default", 10, first + 1, 60)
        stopped: list[str] = []
        h.store.hub.on_cancel(stopped.append)
        assert await h.store.schedules.fire_due(first + 10) == 1
        old, new = await fired_runs(h, schedule.id)
        assert (old.id, old.status.value, new.status.value) == (claimed.id, "cancelled", "queued")
        assert claimed.id in stopped  # the worker running it is told to stop
        attempts = await h.store.get_attempts(old.id)
        assert attempts[0].outcome == "cancelled" and attempts[0].finished_at is not None
        # catch-up: the previous (queued) run cancelled, the latest slot only fires
        assert await h.store.schedules.fire_due(first + 40) == 1
        runs = await fired_runs(h, schedule.id)
        assert [r.status.value for r in runs] == ["cancelled", "cancelled", "queued"]
        assert runs[-1].slot == first + 40


async def test_overlap_exactly_once_per_slot_with_two_schedulers(db_url: str) -> None:
    """Two stores (two schedulers' connections) fire the same rounds at once: every slot
    fires at most once and a skip/buffer_one schedule never has two unfinished runs."""
    async with running(unique_app(db_url)) as h:
        other = create_store(db_url)
        await other.open()
        try:
            t0 = time.time() - 1000
            made = [
                await h.store.schedules.create(every_ten(p, "race"), t0)
                for p in ("skip", "buffer_one", "cancel_running")
            ]
            first = made[0].next_fire_at
            assert first is not None
            for step in range(6):
                now = first + 10 * step
                await asyncio.gather(h.store.schedules.fire_due(now), other.schedules.fire_due(now))
                for record in made:
                    runs = await fired_runs(h, record.id)
                    assert len({r.slot for r in runs}) == len(runs)
                    live = [r for r in runs if r.status.value in ("queued", "running")]
                    assert len(live) == 1, (record.overlap_policy, runs)
        finally:
            await other.close()


async def test_overlap_policy_over_rest(harness: Harness) -> None:
    body = {"name": "ov-rest", "interval_seconds": 60, "task": {"name": "chronoq.noop"}}
    made = await harness.http.post("/v1/schedules", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["overlap_policy"] == "allow" and made.json()["buffered_slot"] is None
    changed = await harness.http.patch("/v1/schedules/ov-rest", json={"overlap_policy": "skip"})
    assert changed.status_code == 200 and changed.json()["overlap_policy"] == "skip"
    for bad in ({"overlap_policy": "queue"}, {"overlap_policy": None}):
        refused = await harness.http.patch("/v1/schedules/ov-rest", json=bad)
        assert refused.status_code == 422, refused.text
    schema = (await harness.http.get("/openapi.json")).json()["components"]["schemas"]
    assert schema["ScheduleCreate"]["properties"]["overlap_policy"]["enum"] == [
        "allow",
        "skip",
        "buffer_one",
        "cancel_running",
    ]
    assert "buffered_slot" in schema["Schedule"]["properties"]
    assert "overlap  skip" in render.schedule_detail(changed.json())


# -- concurrency limits -------------------------------------------------------------------------
def keyed(key: str | None, label: str = "x", limit: int | None = None, **more: Any) -> TaskCreate:
    return TaskCreate(
        name="plain", payload={"label": label}, concurrency_key=key, concurrency=limit, **more
    )


async def finish(h: Harness, tasks: list[TaskRecord], now: float) -> None:
    await h.store.complete([Completion.success(t, now, None) for t in tasks])


async def test_a_key_runs_at_most_its_limit_and_plain_tasks_pass(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        now = time.time()
        await h.store.create_tasks([keyed("a", str(i)) for i in range(5)], now)
        await h.store.create_tasks([keyed("b", "b", limit=2), keyed("b", "b2", limit=2)], now)
        await h.store.create_tasks([keyed(None, "plain")], now)
        claimed = await h.store.claim("w1", "default", 10, now, 60)
        by_key = sorted((t.concurrency_key or "-") for t in claimed)
        assert by_key == ["-", "a", "b", "b"]
        assert await h.store.claim("w2", "default", 10, now, 60) == []  # every key is full
        # a finished task gives its slot back: the next of its key comes
        (a,) = [t for t in claimed if t.concurrency_key == "a"]
        await finish(h, [a], now + 1)
        (nxt,) = await h.store.claim("w2", "default", 10, now + 1, 60)
        assert nxt.concurrency_key == "a" and nxt.payload == {"label": "1"}
        api = await h.get(nxt.id)
        assert (api["concurrency_key"], api["concurrency"]) == ("a", 1)


async def test_keys_take_turns(db_url: str) -> None:
    """Round-robin: a key with many waiting tasks and room for them all gets one per round
    while other keys wait; the other keys' single tasks come in the first claim."""
    async with running(unique_app(db_url)) as h:
        now = time.time()
        await h.store.create_tasks([keyed("big", str(i), limit=100) for i in range(300)], now)
        await h.store.create_tasks([keyed(f"k{i}", "one") for i in range(8)], now + 1)
        claimed = await h.store.claim("w1", "default", 10, now + 1, 60)
        keys = [t.concurrency_key for t in claimed]
        assert sorted(keys) == sorted(["big", "big", *(f"k{i}" for i in range(8))])


async def test_a_crashed_workers_slot_returns_after_its_lease(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        now = time.time()
        await h.store.create_tasks([keyed("solo", str(i)) for i in range(2)], now)
        (held,) = await h.store.claim("dead-worker", "default", 10, now, 5)
        assert await h.store.claim("w2", "default", 10, now + 4, 60) == []
        scheduler = Scheduler(h.store)
        assert await scheduler.reap(now + 4) == 0  # the lease still runs: the slot is held
        assert await h.store.claim("w2", "default", 10, now + 4, 60) == []
        assert await scheduler.reap(now + 6) == 1
        (after,) = await h.store.claim("w2", "default", 10, now + 6, 60)
        assert after.concurrency_key == "solo" and after.id != held.id


async def test_handler_and_payload_derived_limits(db_url: str) -> None:
    app = unique_app(db_url)

    @app.task("per_customer", concurrency=1, concurrency_by="customer_id")
    def per_customer(customer_id: int, n: int) -> int:
        return n

    @app.task("per_handler", concurrency=2)
    def per_handler(n: int) -> int:
        return n

    async with running(app) as h:
        a = await per_customer.adelay(customer_id=42, n=1)
        b = await per_handler.adelay(n=1)
        c = await app.tasks["plain"].options(concurrency_key="x", concurrency=3).adelay(label="")
        found = {t.id: t for t in [await h.store.get_task(x.id) for x in (a, b, c)]}
        assert (found[a.id].concurrency_key, found[a.id].concurrency_limit) == ("customer_id:42", 1)
        assert (found[b.id].concurrency_key, found[b.id].concurrency_limit) == (
            "handler:per_handler",
            2,
        )
        assert (found[c.id].concurrency_key, found[c.id].concurrency_limit) == ("x", 3)
        with pytest.raises(ValueError, match="concurrency_by needs concurrency or rate"):
            app.task("bad", concurrency_by="x")(lambda: None)
        # a worker runs them
        h.start_worker()
        for task_id in found:
            await h.wait_for(task_id, "succeeded")


def overlap_app(app: App) -> dict[str, int]:
    """A ``guarded`` handler counting the tasks of each key running at once; returns the
    highest counts seen."""
    now: dict[str, int] = {}
    peak: dict[str, int] = {}

    @app.task("guarded", concurrency=1, concurrency_by="k")
    async def guarded(k: str, n: int) -> int:
        now[k] = now.get(k, 0) + 1
        peak[k] = max(peak.get(k, 0), now[k])
        await asyncio.sleep(0.01)
        now[k] -= 1
        return n

    return peak


@pytest.mark.parametrize("broker", ["store", "redis"])
async def test_workers_never_exceed_a_key_limit(db_url: str, broker: str) -> None:
    """Two workers of 8 slots each, both brokers: 60 tasks over 3 keys of limit 1 never
    run two of a key at once, and all of them run."""
    from tests.test_redis_broker import BROKER_URL, redis_worker

    app = App(settings=make_settings(db_url, broker_url=BROKER_URL if broker == "redis" else None))
    peak = overlap_app(app)
    async with running(app) as h:
        queue = f"lim{uuid.uuid4().hex[:6]}"
        if broker == "redis":
            workers = [redis_worker(app, queue, concurrency=8) for _ in range(2)]
            jobs = [asyncio.create_task(w.run()) for w in workers]
        else:
            for _ in range(2):
                h.start_worker(queues=[queue], concurrency=8)
        specs = [
            app.tasks["guarded"]
            .spec({"k": f"key{i % 3}", "n": i})
            .model_copy(update={"queue": queue})
            for i in range(60)
        ]
        made = await h.store.create_tasks(specs, time.time())
        for record, _ in made:
            await h.wait_for(record.id, "succeeded", timeout=30)
        if broker == "redis":
            for w in workers:
                w.stop()
            await asyncio.gather(*jobs)
        assert peak == {"key0": 1, "key1": 1, "key2": 1}


# -- rate limits --------------------------------------------------------------------------------
async def test_a_rate_spreads_run_times_across_stores(db_url: str) -> None:
    """GCRA in the store: 20 tasks of one key at 10/s, submitted at once through two
    stores, get 20 distinct turns 0.1 s apart from now; an unrelated key is not held up."""
    async with running(unique_app(db_url)) as h:
        other = create_store(db_url)
        await other.open()
        try:
            now = time.time()
            spec = TaskCreate(name="plain", concurrency_key="api", rate="10/s")
            made = await asyncio.gather(
                *(s.create_task(spec, now) for _ in range(10) for s in (h.store, other))
            )
            batch = await h.store.create_tasks([spec] * 5, now)
            free, _ = await h.store.create_task(
                TaskCreate(name="plain", concurrency_key="other", rate="10/s"), now
            )
        finally:
            await other.close()
        turns = sorted(round(r.run_at - now, 3) for r, _ in [*made, *batch])
        assert turns == [round(0.1 * i, 3) for i in range(25)]
        assert free.run_at == now and free.status.value == "queued"
        statuses = {r.status.value for r, _ in made if r.run_at > now}
        assert statuses == {"scheduled"}  # over the rate: they wait, they do not fail
        record = await h.store.get_task(made[0][0].id)
        assert record.rate_interval == pytest.approx(0.1)


@pytest.mark.parametrize("bad", ["0/s", "5/w", "x/s", "1e9/s", "/s", "0.5/s", "07/s"])
async def test_rest_refuses_bad_rates(harness: Harness, bad: str) -> None:
    response = await harness.http.post("/v1/tasks", json={"name": "chronoq.noop", "rate": bad})
    assert response.status_code == 422, response.text


async def test_queues_and_metrics_show_keys_and_rates(db_url: str) -> None:
    async with running(unique_app(db_url)) as h:
        now = time.time()
        await h.store.create_tasks([keyed("cust:1", str(i)) for i in range(3)], now)
        await h.store.create_tasks([keyed("cust:2", "x", limit=5)], now)
        rated = TaskCreate(name="plain", queue="rated", concurrency_key="api", rate="1/s")
        await h.store.create_tasks([rated] * 4, now)
        await h.store.create_tasks([keyed(None, "plain", queue="plainq")], now)
        await h.store.claim("w1", "default", 10, now, 60)
        await h.store.limits.queues(fresh=True)
        listed = {q["queue"]: q for q in (await h.http.get("/v1/queues")).json()}
        assert listed["plainq"]["limits"] is None
        limits = listed["default"]["limits"]
        assert limits["waiting_on_concurrency"] == 2 and limits["keys_total"] == 2
        keys = {k["key"]: k for k in limits["keys"]}
        assert keys["cust:1"] == {
            "key": "cust:1",
            "running": 1,
            "queued": 2,
            "limit": 1,
            "full": True,
        }
        assert keys["cust:2"]["running"] == 1 and keys["cust:2"]["full"] is False
        rates = listed["rated"]["limits"]
        assert rates["waiting_on_rate"] == 3
        assert rates["rates"][0]["key"] == "api" and rates["rates"][0]["per_second"] == 1.0
        text = (await h.http.get("/metrics")).text
        assert 'chronoq_tasks_waiting_on_limit{limit="concurrency",queue="default"} 2.0' in text
        assert 'chronoq_tasks_waiting_on_limit{limit="rate",queue="rated"} 3.0' in text


async def test_late_rated_tasks_still_start_at_the_rate(db_url: str) -> None:
    """Tasks whose turns passed while no worker ran (all due at once) start no faster than
    their rate allows: claims every 5 ms for a second start 50-55 of 50/s tasks (the claim
    keeps its own GCRA bucket, a little faster than the rate so late tasks catch up)."""
    async with running(unique_app(db_url)) as h:
        now = time.time()
        spec = TaskCreate(name="plain", concurrency_key="late", rate="50/s")
        await h.store.create_tasks([spec] * 100, now)
        later = now + 10
        await h.store.promote_due(later)
        starts = [
            len(await h.store.claim("w1", "default", 20, later + i * 0.005, 60)) for i in range(200)
        ]
        assert max(starts) <= 2
        assert 50 <= sum(starts) <= 55, sum(starts)


def test_cli_submits_with_limits_and_lists_them(tmp_path: Path, procs: list[Proc]) -> None:
    """``chronoq submit --concurrency-key/--concurrency/--rate``, ``chronoq queues`` with a
    limits column, ``chronoq schedules add --overlap``."""
    dev, url = start_dev(tmp_path, "--demo", "--queues", "default")
    procs.append(dev)
    for _ in range(2):  # "held" has no worker: both wait
        made = cli(
            "submit", "demo.add", "-d", '{"a": 1, "b": 2}', "--queue", "held",
            "--concurrency-key", "cust:9", "--concurrency", "1", "--rate", "10/m",
            "--json", "--url", url,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    task = json.loads(made.stdout)
    assert (task["concurrency_key"], task["concurrency"]) == ("cust:9", 1)
    assert task["rate_interval"] == 6.0 and task["status"] == "scheduled"  # its turn: +6 s
    bad = cli("submit", "demo.add", "--rate", "fast", "--url", url)
    assert bad.returncode != 0 and "rate" in bad.stderr
    deadline = time.monotonic() + 10
    while True:
        listed = cli("queues", "--url", url)
        row = next((ln for ln in listed.stdout.splitlines() if ln.startswith("held")), "")
        if "1 key" in row:
            break
        assert time.monotonic() < deadline, listed.stdout
        time.sleep(0.3)
    assert listed.stdout.splitlines()[0].split()[-1] == "LIMITS"
    added = cli(
        "schedules", "add", "ov", "--every", "1h", "--task", "demo.add", "--overlap",
        "buffer_one", "--url", url,
    )  # fmt: skip
    assert added.returncode == 0 and "overlap  buffer_one" in added.stdout, added.stderr
