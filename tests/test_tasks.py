"""End to end through the REST API, a scheduler and workers; on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from chronoq import App, TaskFailed, current_task
from chronoq.models import TaskCreate
from chronoq.runner import Components
from chronoq.states import Status
from chronoq.store import create_store, opened
from chronoq.store.records import INSERT_TASK, TASK_COLUMNS, NewTask
from chronoq.worker import Worker
from tests.conftest import Harness
from tests.waiting import until


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_task_runs_and_records_result_and_attempt(app: App, harness: Harness) -> None:
    @app.task("add")
    def add(a: int, b: int) -> int:
        return a + b

    harness.start_scheduler()
    harness.start_worker()
    task = await harness.submit(name="add", payload={"a": 2, "b": 40})
    # due now: queued, or already running when PostgreSQL handed it to the idle worker in
    # the INSERT itself (a hand-off: docs/architecture.md, "Wake-up and hand-off")
    assert (task["status"], task["attempts"]) in {("queued", 0), ("running", 1)}, task
    done = await harness.wait_for(task["id"], "succeeded")
    assert done["result"] == 42
    assert done["attempts"] == 1
    [attempt] = done["attempt_history"]
    assert attempt["outcome"] == "succeeded"
    assert attempt["result"] == 42
    assert attempt["worker_id"] == harness.workers[0][0].id
    assert ts(attempt["finished_at"]) >= ts(attempt["started_at"])
    # a task due now starts well within a second of its submission
    assert ts(attempt["started_at"]) - ts(done["created_at"]) < 1.0


async def test_async_handler_and_context(app: App, harness: Harness) -> None:
    seen: list[Any] = []

    @app.task("ctx")
    async def ctx() -> str:
        context = current_task.get()
        seen.append(context)
        await asyncio.sleep(0)
        return context.task_id

    harness.start_worker()
    task = await harness.submit(name="ctx")
    done = await harness.wait_for(task["id"], "succeeded")
    assert done["result"] == task["id"]
    assert seen[0].attempt == 1 and seen[0].name == "ctx"


async def test_idempotency_key_returns_the_existing_task(app: App, harness: Harness) -> None:
    first = await harness.http.post("/v1/tasks", json={"name": "x", "idempotency_key": "k-1"})
    second = await harness.http.post(
        "/v1/tasks", json={"name": "x", "idempotency_key": "k-1", "payload": {"other": True}}
    )
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["payload"] == {}
    page = (await harness.http.get("/v1/tasks", params={"name": "x"})).json()
    assert len(page["items"]) == 1


async def test_concurrent_idempotent_submits_create_one_task(app: App, harness: Harness) -> None:
    responses = await asyncio.gather(
        *(
            harness.http.post("/v1/tasks", json={"name": "x", "idempotency_key": "same"})
            for _ in range(10)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in responses}) == 1


async def test_priority_then_run_at_order(app: App, harness: Harness) -> None:
    order: list[str] = []
    five = asyncio.Event()
    loop = asyncio.get_running_loop()

    @app.task("record")
    def record(label: str) -> None:
        order.append(label)
        if len(order) == 5:
            loop.call_soon_threadsafe(five.set)

    for label, priority in [("low-1", 0), ("high-1", 10), ("low-2", 0), ("mid", 5), ("high-2", 10)]:
        await harness.submit(name="record", payload={"label": label}, priority=priority)
    other = await harness.submit(
        name="record", payload={"label": "other-queue"}, queue="other", priority=100
    )
    harness.start_worker(concurrency=1)
    await asyncio.wait_for(five.wait(), 10)
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]
    assert (await harness.get(other["id"]))["status"] == "queued"


async def test_retries_with_exponential_backoff_then_success(app: App, harness: Harness) -> None:
    @app.task("flaky")
    def flaky() -> str:
        attempt = current_task.get().attempt
        if attempt < 3:
            raise TaskFailed(f"fail {attempt}")
        return "ok"

    harness.start_scheduler()
    harness.start_worker()
    task = await harness.submit(
        name="flaky", max_attempts=5, backoff={"base": 0.3, "factor": 2, "max": 10, "jitter": 0}
    )
    done = await harness.wait_for(task["id"], "succeeded")
    history = done["attempt_history"]
    assert [a["outcome"] for a in history] == ["failed", "failed", "succeeded"]
    assert history[0]["error"] == "fail 1"
    gap1 = ts(history[1]["started_at"]) - ts(history[0]["finished_at"])
    gap2 = ts(history[2]["started_at"]) - ts(history[1]["finished_at"])
    assert 0.3 <= gap1 < 0.3 + 0.5, gap1
    assert 0.6 <= gap2 < 0.6 + 0.5, gap2


async def test_exhausted_retries_go_to_dead_letter_queue_and_can_be_retried(
    app: App, harness: Harness
) -> None:
    healthy = False

    @app.task("broken")
    def broken() -> str:
        if not healthy:
            raise ValueError("database says no")
        return "fixed"

    harness.start_scheduler()
    harness.start_worker()
    task = await harness.submit(name="broken", max_attempts=2, backoff={"base": 0.05, "jitter": 0})
    dead = await harness.wait_for(task["id"], "dead")
    assert dead["attempts"] == 2
    assert dead["error"] == "ValueError: database says no"
    assert "Traceback" in dead["attempt_history"][-1]["traceback"]
    dlq = (await harness.http.get("/v1/tasks", params={"status": "dead"})).json()
    assert [t["id"] for t in dlq["items"]] == [task["id"]]

    healthy = True
    retried = await harness.http.post(f"/v1/tasks/{task['id']}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    done = await harness.wait_for(task["id"], "succeeded")
    assert done["attempts"] == 3 and done["result"] == "fixed"


async def test_timeout_fails_attempt_and_worker_keeps_going(app: App, harness: Harness) -> None:
    @app.task("slow")
    async def slow() -> None:
        await asyncio.sleep(30)

    @app.task("quick")
    def quick() -> str:
        return "done"

    harness.start_scheduler()
    harness.start_worker(concurrency=1)
    task = await harness.submit(name="slow", timeout_seconds=0.3, max_attempts=1)
    dead = await harness.wait_for(task["id"], "dead")
    [attempt] = dead["attempt_history"]
    assert attempt["outcome"] == "timeout"
    assert "timed out after 0.3s" in attempt["error"]
    assert 0.3 <= ts(attempt["finished_at"]) - ts(attempt["started_at"]) < 2
    after = await harness.submit(name="quick")
    assert (await harness.wait_for(after["id"], "succeeded"))["result"] == "done"


async def test_delayed_task_runs_on_time(app: App, harness: Harness) -> None:
    @app.task("noop")
    def noop() -> None:
        return None

    harness.start_scheduler()
    harness.start_worker()
    task = await harness.submit(name="noop", delay_seconds=0.7)
    assert task["status"] == "scheduled"
    await asyncio.sleep(0.4)
    assert (await harness.get(task["id"]))["status"] == "scheduled"
    done = await harness.wait_for(task["id"], "succeeded")
    lag = ts(done["attempt_history"][0]["started_at"]) - ts(done["run_at"])
    assert 0 <= lag < 1.0, lag

    at = datetime.now(UTC) + timedelta(seconds=0.5)
    task = await harness.submit(name="noop", run_at=at.isoformat())
    done = await harness.wait_for(task["id"], "succeeded")
    assert 0 <= ts(done["attempt_history"][0]["started_at"]) - at.timestamp() < 1.0


async def test_cancel_scheduled_and_queued_tasks_never_run(app: App, harness: Harness) -> None:
    ran: list[str] = []

    @app.task("noop")
    def noop(label: str) -> None:
        ran.append(label)

    harness.start_scheduler()
    later = await harness.submit(name="noop", payload={"label": "later"}, delay_seconds=0.3)
    queued = await harness.submit(name="noop", payload={"label": "queued"})
    for task in (later, queued):
        response = await harness.http.post(f"/v1/tasks/{task['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
    harness.start_worker()
    marker = await harness.submit(name="noop", payload={"label": "marker"})
    await harness.wait_for(marker["id"], "succeeded")
    await asyncio.sleep(0.5)
    assert ran == ["marker"]
    again = await harness.http.post(f"/v1/tasks/{marker['id']}/cancel")
    assert again.status_code == 409
    assert "succeeded" in again.json()["error"]["message"]


async def test_cancel_running_task_stops_it(app: App, harness: Harness) -> None:
    started = asyncio.Event()
    stopped: list[bool] = []

    @app.task("long")
    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    harness.start_worker()
    task = await harness.submit(name="long")
    await asyncio.wait_for(started.wait(), 5)
    response = await harness.http.post(f"/v1/tasks/{task['id']}/cancel")
    assert response.json()["status"] == "cancelled"
    for _ in range(100):
        if stopped:
            break
        await asyncio.sleep(0.02)
    assert stopped == [True]
    final = await harness.get(task["id"])
    assert final["status"] == "cancelled"
    assert final["attempt_history"][0]["outcome"] == "cancelled"
    assert not harness.workers[0][0].running


async def test_lost_lease_is_retried_by_another_worker(app: App, harness: Harness) -> None:
    """A worker that claimed a task and died (no heartbeats): the scheduler fails the attempt
    when the lease runs out and another worker runs it again."""

    @app.task("noop")
    def noop() -> str:
        return current_task.get().worker_id

    task = await harness.submit(name="noop", max_attempts=3, backoff={"base": 0, "jitter": 0})
    [claimed] = await harness.store.claim("ghost", "default", 10, time.time(), 0.5)
    assert claimed.id == task["id"]
    harness.start_scheduler()
    harness.start_worker(worker_id="survivor")
    done = await harness.wait_for(task["id"], "succeeded", timeout=10)
    assert done["result"] == "survivor"
    first, second = done["attempt_history"]
    assert first["worker_id"] == "ghost" and first["outcome"] == "lost"
    assert second["worker_id"] == "survivor" and second["outcome"] == "succeeded"
    # a late report from the ghost for its superseded attempt changes nothing
    from chronoq.store import Completion

    with harness.store.events.subscribe() as events:
        await harness.store.complete([Completion.failure(claimed, time.time(), "failed", "late")])
        assert events.queue.empty(), "an ignored late report must not publish an event"
    assert (await harness.get(task["id"]))["status"] == "succeeded"


async def test_many_tasks_two_workers_each_runs_once(app: App, harness: Harness) -> None:
    runs: dict[str, int] = {}

    @app.task("count")
    async def count(n: int) -> None:
        key = current_task.get().task_id
        runs[key] = runs.get(key, 0) + 1
        await asyncio.sleep(0.001)

    harness.start_worker(concurrency=8, worker_id="w1")
    harness.start_worker(concurrency=8, worker_id="w2")
    ids = [(await harness.submit(name="count", payload={"n": i}))["id"] for i in range(200)]
    for task_id in ids:
        await harness.wait_for(task_id, "succeeded")
    assert sorted(runs) == sorted(ids)
    assert set(runs.values()) == {1}


async def test_unknown_handler_fails_with_clear_error(app: App, harness: Harness) -> None:
    harness.start_worker()
    task = await harness.submit(name="nobody.handles.this", max_attempts=1)
    dead = await harness.wait_for(task["id"], "dead")
    assert "no handler named 'nobody.handles.this'" in dead["error"]


async def test_python_api_delay_and_schedule(app: App, harness: Harness) -> None:
    @app.task("child")
    def child(x: int) -> int:
        return x * 2

    @app.task("parent")
    def parent(x: int) -> str:
        return child.delay(x=x).id  # sync submit from a handler thread

    harness.start_scheduler()
    harness.start_worker()
    task = await parent.adelay(x=21)
    done = await harness.wait_for(task.id, "succeeded")
    assert (await harness.wait_for(done["result"], "succeeded"))["result"] == 42
    later = await child.options(priority=3).adelay(x=1)
    assert later.task.priority == 3
    scheduled = await child.aschedule(0.3, x=5)
    assert scheduled.task.status == "scheduled"
    assert (await harness.wait_for(scheduled.id, "succeeded"))["result"] == 10


async def test_workers_register_heartbeat_and_stop(app: App, harness: Harness) -> None:
    worker = harness.start_worker(concurrency=3, queues=["default", "emails"])

    async def registered() -> bool:
        return bool((await harness.http.get("/v1/workers")).json())

    await until(registered, "the worker never registered")
    [alive] = (await harness.http.get("/v1/workers")).json()
    assert alive["id"] == worker.id and alive["status"] == "alive"
    assert alive["queues"] == ["default", "emails"] and alive["concurrency"] == 3
    assert time.time() - ts(alive["last_seen_at"]) < 1.0
    await harness.stop_workers()
    assert (await harness.http.get("/v1/workers")).json() == []
    [gone] = (await harness.http.get("/v1/workers", params={"all": "true"})).json()
    assert gone["status"] == "stopped"


async def test_silent_worker_is_marked_dead(app: App, harness: Harness) -> None:
    await harness.store.workers.register("ghost", "nowhere", 1, ["default"], 4, time.time() - 60)
    scheduler = harness.start_scheduler()
    assert scheduler.worker_timeout == 30.0

    async def dead() -> bool:
        [ghost] = (await harness.http.get("/v1/workers", params={"all": "true"})).json()
        return bool(ghost["status"] == "dead")

    await until(dead, "the silent worker was not marked dead", timeout=5)


async def test_graceful_stop_finishes_running_tasks_and_hands_back_the_rest(
    app: App, harness: Harness
) -> None:
    @app.task("nap")
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    worker = Worker(harness.store, app.executors(), concurrency=2, poll_seconds=0.1)
    job = asyncio.create_task(worker.run(drain_seconds=1.0))
    short = await harness.submit(name="nap", payload={"seconds": 0.3})
    long = await harness.submit(name="nap", payload={"seconds": 30}, max_attempts=3)
    await harness.wait_for(long["id"], "running")
    # both started before the stop (the short one may have been inserted before the
    # worker listened, and then waits for its next poll)
    await harness.wait_for(short["id"], "running", "succeeded")
    worker.stop()
    late = await harness.submit(name="nap", payload={"seconds": 0})
    await asyncio.wait_for(job, 10)
    assert (await harness.get(short["id"]))["status"] == "succeeded"
    handed_back = await harness.get(long["id"])
    assert handed_back["status"] in ("failed", "queued")
    assert handed_back["attempt_history"][0]["outcome"] == "lost"
    assert "shut down" in handed_back["attempt_history"][0]["error"]
    assert (await harness.get(late["id"]))["status"] == "queued"  # not taken while draining


async def test_autoscale_grows_with_backlog_and_shrinks_when_idle(
    app: App, harness: Harness
) -> None:
    @app.task("nap")
    async def nap() -> None:
        await asyncio.sleep(0.3)

    worker = Worker(
        harness.store, app.executors(), autoscale=(1, 8), scale_seconds=0.2, poll_seconds=0.1
    )
    assert worker.concurrency == 1
    job = asyncio.create_task(worker.run())
    for _ in range(60):
        await harness.submit(name="nap")
    peak = 0
    for _ in range(60):
        peak = max(peak, worker.concurrency)
        await asyncio.sleep(0.05)
    assert peak == 8
    for _ in range(100):
        if worker.concurrency == 1 and worker.processed == 60:
            break
        await asyncio.sleep(0.1)
    assert worker.processed == 60
    assert worker.concurrency == 1
    worker.stop()
    await job


def test_the_async_pool_claims_ahead_only_when_told() -> None:
    """``CHRONOQ_PREFETCH`` reaches an async-pool worker too (default: none claimed
    ahead); a process pool claims 4 per child unless told otherwise."""
    assert Components(concurrency=16).slots(None) == (16, 0)
    assert Components(concurrency=16, prefetch=8).slots(None) == (16, 8)
    assert Components(pool="process", concurrency=16).slots(3) == (3, 12)
    assert Components(pool="process", prefetch=0).slots(3) == (3, 0)


async def test_prefetch_follows_the_autoscaled_slots(app: App, harness: Harness) -> None:
    """``prefetch`` is claimed ahead at ``concurrency``; as the autoscaler doubles and
    halves the slots (with a process pool, its children), the share per slot stays."""
    release = asyncio.Event()

    @app.task("wait")
    async def wait() -> None:
        await release.wait()

    worker = Worker(
        harness.store,
        app.executors(),
        concurrency=2,
        prefetch=4,
        autoscale=(1, 4),
        scale_seconds=0.1,
        poll_seconds=0.1,
    )
    assert (worker.concurrency, worker.prefetch) == (1, 2)  # 2 per slot from the start
    for _ in range(30):  # a backlog before it starts: each claim fills what it may
        await harness.submit(name="wait")
    job = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        while not (worker.concurrency == 4 and len(worker.leased()) == 12):
            assert time.monotonic() < deadline, (worker.concurrency, len(worker.leased()))
            await asyncio.sleep(0.02)
        assert worker.prefetch == 8  # 4 slots busy, 8 claimed ahead
        await asyncio.sleep(0.5)  # more scaling periods: no more claimed than that
        assert len(worker.running) == 4 and len(worker.leased()) == 12
        release.set()
        deadline = time.monotonic() + 20
        while not (worker.processed == 30 and worker.concurrency == 1):
            assert time.monotonic() < deadline, (worker.processed, worker.concurrency)
            await asyncio.sleep(0.05)
        assert worker.prefetch == 2
    finally:
        release.set()
        worker.stop()
        await job


async def test_error_text_with_nul_characters_is_recorded(app: App, harness: Harness) -> None:
    """PostgreSQL refuses NUL in text: an error message carrying one must not block the
    worker's result writes (it is stored escaped) and later tasks still finish."""

    @app.task("nul")
    def nul() -> None:
        raise ValueError("bad\x00byte")

    @app.task("fine")
    def fine() -> str:
        return "ok"

    harness.start_worker()
    task = await harness.submit(name="nul", max_attempts=1)
    dead = await harness.wait_for(task["id"], "dead")
    assert dead["error"] == "ValueError: bad\\x00byte"
    assert "bad\\x00byte" in dead["attempt_history"][0]["traceback"]
    after = await harness.submit(name="fine")
    assert (await harness.wait_for(after["id"], "succeeded"))["result"] == "ok"


async def test_a_new_task_record_names_every_column_it_writes(db_url: str) -> None:
    """The INSERT's columns, placeholders and (PostgreSQL) array types all come from
    :class:`NewTask`'s fields, and a row written from it reads back field for field."""
    async with opened(create_store(db_url)) as store:
        now = time.time()
        spec = TaskCreate(name="typed", payload={"n": [1, "two"]}, priority=3, max_attempts=4)
        task = NewTask.of(spec, now + 60, now, "key-1", namespace="ns")
        async with store.conn() as c:
            [row] = await c.fetch(f"{INSERT_TASK} RETURNING *", *task.values())
        assert {column: row[column] for column in TASK_COLUMNS} == {
            column: getattr(task, column) for column in TASK_COLUMNS
        }
        assert task.status is Status.SCHEDULED and task.idempotency == ("ns", "key-1")
        record = await store.get_task(task.id)
        assert (record.payload, record.priority, record.max_attempts) == (spec.payload, 3, 4)
        if store.dialect == "postgresql":
            from chronoq.store.postgres import _TASK_TYPES

            assert list(_TASK_TYPES) == list(TASK_COLUMNS)
