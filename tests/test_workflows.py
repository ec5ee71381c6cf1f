"""Workflows end to end, on SQLite and PostgreSQL: chains pass results, groups and chords
fan in, DAGs receive parents' results by name, a death fails the descendants, a retry
resumes them, a cancel stops the rest — and no node ever runs before its parents succeeded
or more than once."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import chronoq
from chronoq import App, Status, WorkflowFailed
from chronoq.api import create_api
from chronoq.broker import Consumer
from chronoq.broker.redis import RedisBroker
from chronoq.dag import WorkflowCreate
from chronoq.events import EventBus, WorkflowEvent, WorkflowSubscription
from chronoq.retention import Policy, queues_by_status
from chronoq.retention import purge as purge_tasks
from chronoq.store import workflows
from chronoq.worker import Worker
from tests.conftest import Harness, make_settings, running
from tests.processes import Proc, cli, free_port, wait_ready

NEVER = 3600.0


def register(app: App, runs: Counter[str], log: list[tuple[str, float]]) -> dict[str, Any]:
    """Handlers that record each run (name, start time) and return something to check."""

    @app.task("add")
    def add(x: int = 0, result: int = 0) -> int:
        runs["add"] += 1
        return x + result

    @app.task("total")
    def total(results: list[int]) -> int:
        runs["total"] += 1
        return sum(results)

    @app.task("noop")
    async def noop(i: int = 0) -> int:
        runs[f"noop{i}"] += 1
        return i

    @app.task("join")
    def join(**parents: Any) -> dict[str, Any]:
        runs["join"] += 1
        log.append(("join", time.time()))
        return parents

    @app.task("boom", max_attempts=1)
    def boom(**_: Any) -> None:
        runs["boom"] += 1
        raise RuntimeError("boom")

    @app.task("slow")
    async def slow(**_: Any) -> str:
        runs["slow"] += 1
        await asyncio.sleep(30)
        return "late"

    return {"add": add, "total": total, "noop": noop, "join": join, "boom": boom, "slow": slow}


async def test_chain_passes_each_result_to_the_next(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    flow = chronoq.chain(t["add"].s(x=1), t["add"].s(x=10), t["add"].s(x=100))
    handle = await flow.adelay()
    assert await asyncio.wait_for(handle.aresult(recheck_seconds=NEVER), 20) == 111
    assert runs["add"] == 3
    state = await handle.aget()
    assert state.status == "succeeded" and state.counts == {Status.SUCCEEDED: 3}


async def test_group_results_in_order_and_chord_callback_once(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker(concurrency=8)
    group = chronoq.group(*(t["noop"].s(i=i) for i in range(20)))
    assert await asyncio.wait_for((await group.adelay()).aresult(), 20) == list(range(20))
    chord = chronoq.chord(chronoq.group(*(t["noop"].s(i=i) for i in range(50))), t["total"].s())
    assert await asyncio.wait_for((await chord.adelay()).aresult(), 30) == sum(range(50))
    assert runs["total"] == 1
    assert all(runs[f"noop{i}"] == 2 if i < 20 else runs[f"noop{i}"] == 1 for i in range(50))


async def test_dag_fan_in_gets_parents_by_name(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    log: list[tuple[str, float]] = []
    t = register(app, runs, log)
    harness.start_worker(concurrency=4)
    flow = chronoq.dag(
        chronoq.step("a", t["add"].s(x=1)),
        chronoq.step("b", t["add"].s(x=2)),
        chronoq.step("c", t["add"].s(x=3).receives("result"), depends_on=["a"]),
        chronoq.step("j", t["join"].s(), depends_on=["a", "b", "c"]),
    )
    handle = await flow.adelay("fan-in")
    # c's parent is named a, so it receives a=...: `receives` only renames result/results
    with pytest.raises(WorkflowFailed):
        await asyncio.wait_for(handle.aresult(), 20)
    flow = chronoq.dag(
        chronoq.step("a", t["add"].s(x=1)),
        chronoq.step("b", t["add"].s(x=2)),
        chronoq.step("j", t["join"].s(), depends_on=["a", "b"]),
    )
    handle = await flow.adelay("fan-in")
    assert await asyncio.wait_for(handle.aresult(), 20) == {"a": 1, "b": 2}
    nodes = {n.id: n for n in (await handle.aget()).nodes or []}
    assert nodes["j"].parents == ["a", "b"] and nodes["j"].waiting == 0


async def test_a_death_fails_descendants_and_a_retry_resumes_them(
    app: App, harness: Harness
) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    flow = chronoq.chain(t["add"].s(x=1), t["boom"].s(), t["add"].s(x=5), t["add"].s(x=7))
    handle = await flow.adelay()
    with pytest.raises(WorkflowFailed) as failed:
        await asyncio.wait_for(handle.aresult(recheck_seconds=NEVER), 20)
    assert failed.value.task.status is Status.UPSTREAM_FAILED
    state = await handle.aget()
    assert state.status == "failed"
    assert [n.status for n in state.nodes or []] == [
        Status.SUCCEEDED,
        Status.DEAD,
        Status.UPSTREAM_FAILED,
        Status.UPSTREAM_FAILED,
    ]
    assert runs["add"] == 1 and runs["boom"] == 1

    # swap the failing handler for one that succeeds, then retry the dead node
    def double(result: int) -> int:
        return result * 2

    app.tasks["boom"].fn = double
    await harness.stop_workers()
    harness.start_worker()
    dead = (state.nodes or [])[1]
    with harness.store.events.subscribe_workflows() as feed:
        await app.aretry(dead.task_id)
        (revived,) = await next_workflow_events(feed, "resumed")
    assert revived.workflow_id == handle.id
    resumed = await handle.aget()
    assert resumed.status == "running" and resumed.error is None
    assert [n.status for n in resumed.nodes or []][2:] in (
        [Status.BLOCKED, Status.BLOCKED],
        [Status.QUEUED, Status.BLOCKED],
        [Status.RUNNING, Status.BLOCKED],
        [Status.SUCCEEDED, Status.BLOCKED],
    )
    assert await asyncio.wait_for(handle.aresult(), 20) == 1 * 2 + 5 + 7
    assert (await handle.aget()).status == "succeeded"


async def test_cancel_stops_running_and_pending_nodes(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    flow = chronoq.chain(t["slow"].s(), t["add"].s(), t["add"].s())
    handle = await flow.adelay()
    first = handle.workflow.outputs  # the last node
    deadline = time.monotonic() + 10
    while runs["slow"] == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    state = await handle.acancel()
    assert state.status == "cancelled"
    assert {n.status for n in state.nodes or []} == {Status.CANCELLED}
    with pytest.raises(WorkflowFailed):
        await asyncio.wait_for(handle.aresult(), 10)
    assert runs["add"] == 0 and first


@pytest.fixture
async def big(db_url: str) -> AsyncIterator[Harness]:
    """An App whose body limit lets a graph over the node limit reach the validation."""
    async with running(App(settings=make_settings(db_url, max_request_bytes=8_000_000))) as h:
        yield h


async def test_rest_creates_validates_lists_and_cancels(big: Harness) -> None:
    harness = big
    node: dict[str, Any] = {"task": {"name": "add", "payload": {"x": 1}}}
    body: dict[str, Any] = {
        "name": "by-rest",
        "nodes": [{"id": "a", **node}, {"id": "b", **node}, {"id": "c", **node}],
        "edges": [
            {"parent": "a", "child": "b", "arg": "result"},
            {"parent": "b", "child": "c", "arg": "result"},
        ],
    }
    created = await harness.http.post("/v1/workflows", json=body)
    assert created.status_code == 201, created.text
    workflow = created.json()
    assert workflow["status"] == "running" and workflow["size"] == 3
    got = (await harness.http.get(f"/v1/workflows/{workflow['id']}")).json()
    assert [(n["id"], n["status"]) for n in got["nodes"]] == [
        ("a", "queued"),
        ("b", "blocked"),
        ("c", "blocked"),
    ]
    listed = (await harness.http.get("/v1/workflows")).json()
    assert [w["id"] for w in listed["items"]] == [workflow["id"]]
    cancelled = await harness.http.post(f"/v1/workflows/{workflow['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    bad = {
        "cycle": ({"edges": [*body["edges"], {"parent": "c", "child": "a"}]}, "a -> b -> c -> a"),
        "unknown": ({"edges": [{"parent": "a", "child": "zz"}]}, "unknown node 'zz'"),
        "self": ({"edges": [{"parent": "a", "child": "a"}]}, "cannot depend on itself"),
        "twice": ({"nodes": [{"id": "a", **node}, {"id": "a", **node}]}, "used twice"),
        "size": ({"nodes": [{"id": str(i), **node} for i in range(20_001)]}, "20000"),
    }
    # a graph over the node limit fits a request only under a larger body limit
    for problem, (change, message) in bad.items():
        response = await harness.http.post("/v1/workflows", json={**body, **change})
        assert response.status_code == 422, (problem, response.text)
        assert message in response.text, (problem, response.text)
    missing = await harness.http.get("/v1/workflows/01890a5d-ac96-774b-bcce-b302099a8057")
    assert missing.status_code == 404


def test_the_graph_checks_name_the_problem() -> None:
    node = {"task": {"name": "x"}}
    nodes = [{"id": i, **node} for i in "abc"]
    with pytest.raises(ValueError, match="cycle: b -> c -> b"):
        WorkflowCreate.model_validate(
            {
                "nodes": nodes,
                "edges": [{"parent": "b", "child": "c"}, {"parent": "c", "child": "b"}],
            }
        )
    with pytest.raises(ValueError, match="already receives 'result'"):
        WorkflowCreate.model_validate(
            {
                "nodes": nodes,
                "edges": [
                    {"parent": "a", "child": "c", "arg": "result"},
                    {"parent": "b", "child": "c", "arg": "result"},
                ],
            }
        )


async def test_parents_finishing_together_enqueue_a_node_once(app: App, harness: Harness) -> None:
    """Many parents' completions written at once, by concurrent writers (no worker): the
    fan-in node is made queued by exactly one of them."""
    n = 200
    spec = WorkflowCreate.model_validate(
        {
            "nodes": [{"id": f"p{i}", "task": {"name": "noop"}} for i in range(n)]
            + [{"id": "cb", "task": {"name": "total"}}],
            "edges": [
                {"parent": f"p{i}", "child": "cb", "arg": "results", "position": i}
                for i in range(n)
            ],
        }
    )
    store = harness.store
    started = await workflows.create(store, spec, time.time())
    claimed = await store.claim("w1", "default", n, time.time(), 30.0)
    assert len(claimed) == n
    queued: list[str] = []
    with store.events.subscribe() as events:
        from chronoq.store.records import Completion

        await asyncio.gather(
            *(
                store.complete([Completion.success(task, time.time(), i)])
                for i, task in enumerate(claimed)
            )
        )
        await asyncio.sleep(0.05)
        while not events.queue.empty():
            batch = events.queue.get_nowait()
            queued += [e.task_id for e in batch if e.status == "queued"]
    callback = started.ids["cb"]
    assert queued.count(callback) == 1
    (task,) = await store.claim("w1", "default", 10, time.time(), 30.0)
    assert task.id == callback
    assert sorted(task.payload["results"]) == list(range(n))


async def test_a_chord_of_2000_runs_its_callback_once_on_postgres(pg_url: str) -> None:
    """2,000 no-op tasks on three workers, then one callback with every result in order."""
    app = App(settings=make_settings(pg_url))
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    async with running(app) as h:
        for n in range(3):
            h.start_worker(concurrency=16, worker_id=f"w{n}")
        flow = chronoq.chord([t["noop"].s(i=i) for i in range(2000)], t["total"].s())
        started = time.monotonic()
        handle = await flow.adelay("chord-2000")
        assert await asyncio.wait_for(handle.aresult(recheck_seconds=0.5), 120) == sum(range(2000))
        print(f"chord of 2000 on 3 workers: {time.monotonic() - started:.2f}s")
        assert runs["total"] == 1
        assert sum(runs[f"noop{i}"] for i in range(2000)) == 2000
        callback = (await handle.aget()).nodes or []
        assert callback[-1].attempts == 1 and callback[-1].status is Status.SUCCEEDED


async def test_unblocked_nodes_reach_redis_stream_workers(db_url: str) -> None:
    """With the Redis Streams broker, a node queued by its parent's completion is published
    like a submission (no reconciler runs here, so a node left unpublished would hang)."""
    url = "redis://127.0.0.1:6379/13"
    client = redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    app = App(settings=make_settings(db_url, broker_url=url))
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    async with running(app):

        def make(consumer: Consumer) -> RedisBroker:
            return RedisBroker(
                url, consumer.store, consumer.worker_id, consumer.queues, consumer.lease_seconds
            )

        worker = Worker(app.store, app.executors(), poll_seconds=0.2, broker=make)
        job = asyncio.create_task(worker.run(drain_seconds=5))
        try:
            flow = chronoq.chain(
                t["add"].s(x=1),
                chronoq.group(t["add"].s(x=2), t["add"].s(x=3)),
                t["total"].s(),
            )
            handle = await flow.adelay()
            assert await asyncio.wait_for(handle.aresult(recheck_seconds=NEVER), 20) == 7
        finally:
            worker.stop()
            await job


async def test_workflows_keep_to_their_namespace_and_scopes(db_url: str) -> None:
    async with running(App(settings=make_settings(db_url, auth=True))) as h:
        keys = {}
        for name, scope, namespace in [
            ("a", "write", "alpha"),
            ("b", "write", "beta"),
            ("r", "read", "alpha"),
        ]:
            _, secret = await h.store.keys.create(name, [scope], namespace=namespace)
            keys[name] = {"authorization": f"Bearer {secret}"}
        body = {"nodes": [{"id": "only", "task": {"name": "add"}}]}
        created = await h.http.post("/v1/workflows", json=body, headers=keys["a"])
        assert created.status_code == 201 and created.json()["namespace"] == "alpha"
        path = f"/v1/workflows/{created.json()['id']}"
        assert (await h.http.get(path, headers=keys["r"])).status_code == 200
        assert (await h.http.get(path, headers=keys["b"])).status_code == 404
        assert (await h.http.post(f"{path}/cancel", headers=keys["b"])).status_code == 404
        assert (await h.http.get("/v1/workflows", headers=keys["b"])).json()["items"] == []
        refused = await h.http.post("/v1/workflows", json=body, headers=keys["r"])
        assert refused.status_code == 403
        assert (await h.http.get("/v1/workflows")).status_code == 401


async def test_a_bulk_retry_resumes_every_dead_nodes_descendants(
    app: App, harness: Harness
) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    handles = [
        await chronoq.chain(t["add"].s(x=i), t["boom"].s(), t["add"].s(x=1)).adelay()
        for i in range(3)
    ]
    for handle in handles:
        with pytest.raises(WorkflowFailed):
            await asyncio.wait_for(handle.aresult(), 20)

    def double(result: int) -> int:
        return result * 2

    app.tasks["boom"].fn = double
    await harness.stop_workers()
    harness.start_worker()
    retried = await harness.http.post(
        "/v1/tasks/retry", json={"filter": {"status": "dead", "name": "boom"}}
    )
    assert retried.status_code == 200, retried.text
    results = [await asyncio.wait_for(h.aresult(), 20) for h in handles]
    assert results == [i * 2 + 1 for i in range(3)]


async def test_the_async_client_starts_reads_lists_and_cancels(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    transport = httpx.ASGITransport(app=create_api(app))
    async with chronoq.AsyncClient("http://chronoq", transport=transport) as client:
        spec = chronoq.chain(t["add"].s(x=1), t["add"].s(x=2)).spec("remote")
        started = await client.start_workflow(spec)
        assert started.name == "remote" and started.size == 2
        got = await client.get_workflow(started.id)
        assert [n.status for n in got.nodes or []] == [Status.QUEUED, Status.BLOCKED]
        assert [w.id for w in (await client.list_workflows()).items] == [started.id]
        harness.start_worker()
        handle = chronoq.WorkflowHandle[int](app, started)
        assert await asyncio.wait_for(handle.aresult(), 20) == 3
        assert (await client.cancel_workflow(started.id)).status == "succeeded"


async def test_a_node_whose_lease_lapses_on_its_last_attempt_fails_its_descendants(
    app: App, harness: Harness
) -> None:
    """The lease reaper's path (fenced, on the scheduler) dooms descendants too: the root
    is claimed by a worker that never reports back, with one attempt allowed."""
    spec = WorkflowCreate.model_validate(
        {
            "nodes": [
                {"id": "root", "task": {"name": "add", "max_attempts": 1}},
                {"id": "mid", "task": {"name": "add"}},
                {"id": "leaf", "task": {"name": "add"}},
            ],
            "edges": [{"parent": "root", "child": "mid"}, {"parent": "mid", "child": "leaf"}],
        }
    )
    started = await workflows.create(harness.store, spec, time.time())
    (claimed,) = await harness.store.claim("gone", "default", 10, time.time(), 0.2)
    assert claimed.id == started.ids["root"]
    harness.start_scheduler()
    handle = chronoq.WorkflowHandle[int](app, started.workflow)
    with pytest.raises(WorkflowFailed) as failed:
        await asyncio.wait_for(handle.aresult(recheck_seconds=NEVER), 20)
    assert failed.value.task.status is Status.UPSTREAM_FAILED
    nodes = {n.id: n.status for n in (await handle.aget()).nodes or []}
    assert nodes == {
        "root": Status.DEAD,
        "mid": Status.UPSTREAM_FAILED,
        "leaf": Status.UPSTREAM_FAILED,
    }


# -- workflow events, deadlines, `always` edges, retention -------------------------------------
async def next_workflow_events(
    feed: WorkflowSubscription, until: str, timeout: float = 20
) -> list[WorkflowEvent]:
    """Workflow events from ``feed`` up to the first whose status is ``until``."""
    seen: list[WorkflowEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            for event in await feed.__anext__():
                seen.append(event)
                if event.status == until:
                    return seen


def steps(events: list[WorkflowEvent]) -> list[tuple[str | None, str | None]]:
    return [(e.node, e.step_status) for e in events if e.status == "step_finished"]


async def test_workflow_events_from_start_to_each_end(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    with harness.store.events.subscribe_workflows() as feed:
        handle = await chronoq.chain(t["add"].s(x=1), t["add"].s(x=2)).adelay("ok")
        events = await next_workflow_events(feed, "succeeded")
        assert [e.status for e in events] == [
            "started",
            "step_finished",
            "step_finished",
            "succeeded",
        ]
        assert {e.workflow_id for e in events} == {handle.id}
        assert steps(events) == [("0:add", "succeeded"), ("1:add", "succeeded")]
        assert events[0].name == events[-1].name == "ok"
        state = await handle.aget()
        assert state.status == "succeeded" and state.finished_at is not None

        handle = await chronoq.chain(t["add"].s(x=1), t["boom"].s(), t["add"].s()).adelay("bad")
        events = await next_workflow_events(feed, "failed")
        assert steps(events) == [
            ("0:add", "succeeded"),
            ("2:add", "upstream_failed"),
            ("1:boom", "dead"),
        ] or steps(events) == [
            ("0:add", "succeeded"),
            ("1:boom", "dead"),
            ("2:add", "upstream_failed"),
        ]
        assert events[-1].error == "node 1:boom (boom) died"
        assert (await handle.aget()).error == "node 1:boom (boom) died"

        handle = await chronoq.chain(t["slow"].s(), t["add"].s()).adelay("stopped")
        await next_workflow_events(feed, "started")
        await handle.acancel()
        events = await next_workflow_events(feed, "cancelled")
        assert sorted(steps(events)) == [("0:slow", "cancelled"), ("1:add", "cancelled")]
        assert events[-1].error == "cancelled by a user"


async def test_a_deadline_cancels_the_rest_and_fails_the_workflow(
    app: App, harness: Harness
) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    harness.start_scheduler()
    spec = chronoq.chain(t["add"].s(x=1), t["slow"].s(), t["add"].s()).spec("late")
    spec.timeout_seconds = 0.5
    with harness.store.events.subscribe_workflows() as feed:
        started = await workflows.create(harness.store, spec, time.time())
        events = await next_workflow_events(feed, "failed", timeout=10)
    assert events[-1].error == "timed out: the workflow did not finish within 0.5 s"
    state = await workflows.get(harness.store, started.workflow.id)
    assert state.status == "failed" and state.error == events[-1].error
    assert [n.status for n in state.nodes or []] == [
        Status.SUCCEEDED,
        Status.CANCELLED,
        Status.CANCELLED,
    ]
    assert runs["add"] == 1 and runs["slow"] == 1  # the running step was stopped
    # a deadline that passes after the end changes nothing
    done = await chronoq.chain(t["add"].s(x=1)).adelay()
    await asyncio.wait_for(done.aresult(), 10)
    assert await workflows.time_out(harness.store, time.time() + 10) == 0


async def test_an_always_edge_runs_its_child_after_a_failure(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    log: list[tuple[str, float]] = []
    register(app, runs, log)
    harness.start_worker()
    spec = WorkflowCreate.model_validate(
        {
            "name": "cleanup",
            "nodes": [
                {"id": "work", "task": {"name": "boom", "max_attempts": 1}},
                {"id": "after", "task": {"name": "add", "payload": {"x": 1}}},
                {"id": "cleanup", "task": {"name": "join"}},
            ],
            "edges": [
                {"parent": "work", "child": "after", "arg": "result"},
                {"parent": "work", "child": "cleanup", "always": True},
            ],
            "outputs": ["cleanup"],
        }
    )
    started = await workflows.create(harness.store, spec, time.time())
    handle = chronoq.WorkflowHandle[dict[str, Any]](app, started.workflow)
    assert await asyncio.wait_for(handle.aresult(), 20) == {"work": None}  # null: dead
    state = await handle.aget()
    nodes = {n.id: n for n in state.nodes or []}
    assert nodes["after"].status is Status.UPSTREAM_FAILED and runs["add"] == 0
    assert state.status == "failed"
    assert {(e.parent, e.child, e.always) for e in state.edges or []} == {
        ("work", "after", False),
        ("work", "cleanup", True),
    }


async def test_retention_purges_a_finished_workflow_whole(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    done = await chronoq.chain(t["add"].s(x=1), t["add"].s()).adelay()
    await asyncio.wait_for(done.aresult(), 10)
    failed = await chronoq.chain(t["boom"].s(), t["add"].s()).adelay()
    with pytest.raises(WorkflowFailed):
        await asyncio.wait_for(failed.aresult(), 10)
    slow = await chronoq.chain(t["add"].s(x=1), t["slow"].s()).adelay()
    policy = Policy.parse("succeeded=1h,dead=2h")
    now = time.time()
    # tasks purges leave the nodes to their workflows
    purged = await purge_tasks(
        harness.store, policy.expired(await queues_by_status(harness.store), now + 3 * 3600)
    )
    assert purged.total == 0
    assert await workflows.purge(harness.store, policy.age, now) == 0  # too young
    # one hour on: the succeeded one goes; the failed one keeps its dead node 2 h
    assert await workflows.purge(harness.store, policy.age, now + 3601) == 1
    with pytest.raises(workflows.WorkflowNotFound):
        await workflows.get(harness.store, done.id)
    assert (await workflows.get(harness.store, failed.id)).status == "failed"
    assert await workflows.purge(harness.store, policy.age, now + 7201) == 1
    async with harness.store.conn() as c:
        left = await c.fetch("SELECT count(*) AS n FROM tasks WHERE workflow_id = $1", failed.id)
    assert left[0]["n"] == 0
    with pytest.raises(workflows.WorkflowNotFound):
        await workflows.get(harness.store, failed.id)
    # a running workflow is never purged, whatever its age
    assert await workflows.purge(harness.store, policy.age, now + 10**6) == 0
    assert (await workflows.get(harness.store, slow.id)).status == "running"
    await slow.acancel()  # its running step stops: no drain wait at teardown


async def test_a_schedule_starts_one_workflow_per_slot(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    spec = chronoq.chain(t["add"].s(x=1), t["add"].s(x=2)).spec("nightly")
    body = {"name": "flow", "interval_seconds": 3600, "workflow": spec.model_dump(mode="json")}
    created = await harness.http.post("/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["task"] is None and schedule["workflow"]["name"] == "nightly"
    both = await harness.http.post("/v1/schedules", json={**body, "task": {"name": "add"}})
    assert both.status_code == 422 and "exactly one of task or workflow" in both.text
    slot = time.time() - 10
    with harness.store.events.subscribe_workflows() as feed:
        for _ in range(2):  # the same slot fired twice (two schedulers, or a retry)
            async with harness.store.tx() as c:
                await c.execute(
                    "UPDATE schedules SET next_fire_at = $1, last_fire_at = NULL WHERE id = $2",
                    slot,
                    schedule["id"],
                )
            await harness.store.schedules.fire_due(slot + 1)
        (started,) = await next_workflow_events(feed, "started")
    listed = (await harness.http.get("/v1/workflows")).json()["items"]
    assert [(w["id"], w["schedule_id"]) for w in listed] == [(started.workflow_id, schedule["id"])]
    harness.start_worker()
    handle = chronoq.WorkflowHandle[int](
        app, await workflows.get(harness.store, started.workflow_id)
    )
    assert await asyncio.wait_for(handle.aresult(), 20) == 3
    # a run by hand starts one more, and answers with its first node's task
    fired = await harness.http.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert fired.status_code in (200, 201), fired.text
    assert fired.json()["name"] == "add"
    assert len((await harness.http.get("/v1/workflows")).json()["items"]) == 2
    # PATCH to a task and back
    patched = await harness.http.patch(
        f"/v1/schedules/{schedule['id']}", json={"task": {"name": "add"}}
    )
    assert patched.status_code == 200 and patched.json()["workflow"] is None, patched.text


async def test_a_steps_run_span_links_to_its_parents_steps(
    app: App, harness: Harness, exported: InMemorySpanExporter
) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker(concurrency=4)
    flow = chronoq.dag(
        chronoq.step("a", t["add"].s(x=1)),
        chronoq.step("b", t["add"].s(x=2)),
        chronoq.step("j", t["join"].s(), depends_on=["a", "b"]),
    )
    handle = await flow.adelay("traced")
    assert await asyncio.wait_for(handle.aresult(), 20) == {"a": 1, "b": 2}
    await harness.stop_workers()  # every run span ended
    spans = exported.get_finished_spans()
    (root,) = [s for s in spans if s.name == "chronoq.workflow traced"]
    steps = {
        s.name.removeprefix("chronoq.step "): s for s in spans if s.name.startswith("chronoq.step ")
    }
    runs_of = {
        str((s.attributes or {})["chronoq.node"]): s
        for s in spans
        if s.name.startswith("chronoq.run ")
    }
    assert set(steps) == set(runs_of) == {"a", "b", "j"}
    trace_ids = {s.context.trace_id for s in [root, *steps.values(), *runs_of.values()]}
    assert trace_ids == {root.context.trace_id}  # one trace shows the whole graph
    for node, step in steps.items():
        assert step.parent is not None and step.parent.span_id == root.context.span_id
        run = runs_of[node]
        assert run.parent is not None and run.parent.span_id == step.context.span_id
        assert (run.attributes or {})["chronoq.workflow_id"] == handle.id
    linked = {link.context.span_id for link in runs_of["j"].links}
    assert linked == {steps["a"].context.span_id, steps["b"].context.span_id}
    assert not runs_of["a"].links and not runs_of["b"].links


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``chronoq dev --demo`` on a fresh SQLite file: its URL."""
    folder = tmp_path_factory.mktemp("demo")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = Proc(
        ["dev", "--demo", "--port", str(port), "--database-url", f"sqlite:///{folder / 'd.db'}"],
        {},
        folder / "dev.log",
    )
    try:
        wait_ready(url, dev)
        yield url
    finally:
        assert dev.terminate() == 0


def test_the_cli_starts_lists_shows_and_cancels_workflows(demo: str, tmp_path: Path) -> None:
    """``chronoq workflow(s) start|ls|get|cancel`` through chronoq.client."""
    url = demo
    spec = tmp_path / "flow.json"
    nodes = [{"id": "nap", "task": {"name": "demo.sleep", "payload": {"seconds": 60}}}]
    nodes.append({"id": "after", "task": {"name": "demo.add", "payload": {"b": 1}}})
    edges = [{"parent": "nap", "child": "after", "arg": "a"}]
    spec.write_text(json.dumps({"nodes": nodes, "edges": edges}))
    started = cli("workflow", "start", str(spec), "--name", "cli-flow", "--timeout", "1h",
                  "--url", url, "--json")  # fmt: skip
    assert started.returncode == 0, started.stderr
    workflow = json.loads(started.stdout)
    assert workflow["name"] == "cli-flow" and workflow["deadline"] is not None
    listed = cli("workflows", "ls", "--url", url)
    assert listed.returncode == 0 and workflow["id"] in listed.stdout, listed.stderr
    cancelled = cli("workflows", "cancel", workflow["id"], "--url", url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled (cancelled by a user)" in cancelled.stdout
    assert re.search(r"after\s+demo\.add\s+cancelled", cancelled.stdout), cancelled.stdout
    missing = cli("workflows", "get", "0" * 8 + "-0000-0000-0000-" + "0" * 12, "--url", url)
    assert missing.returncode == 1 and "no workflow with id" in missing.stderr


def test_the_event_stream_carries_workflow_events_by_type(demo: str) -> None:
    """``/v1/events?types=workflow&workflow_id=``: that workflow's events, no task ones."""
    port = demo.rsplit(":", 1)[1]
    nodes = [
        {"id": "one", "task": {"name": "demo.add", "payload": {"a": 1, "b": 2}}},
        {"id": "two", "task": {"name": "demo.add", "payload": {"b": 3}}},
    ]
    body = {
        "name": "streamed",
        "nodes": nodes,
        "edges": [{"parent": "one", "child": "two", "arg": "a"}],
    }
    other = {"id": "01a23300-0000-7000-8000-000000000000"}  # no such workflow
    with (
        connect(f"ws://127.0.0.1:{port}/v1/events?types=workflow") as every,
        connect(
            f"ws://127.0.0.1:{port}/v1/events?types=workflow&workflow_id={other['id']}"
        ) as none,
    ):
        created = httpx.post(f"{demo}/v1/workflows", json=body, timeout=5)
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["status"] != "succeeded":
            seen += [
                e for e in json.loads(every.recv(timeout=10)) if e["workflow_id"] == workflow_id
            ]
        with pytest.raises(TimeoutError):  # nothing for another workflow
            none.recv(timeout=0.5)
    assert all(e["type"] == "workflow" for e in seen)
    assert [(e["status"], e["node"], e["step_status"]) for e in seen] == [
        ("started", None, None),
        ("step_finished", "one", "succeeded"),
        ("step_finished", "two", "succeeded"),
        ("succeeded", None, None),
    ]
    assert seen[0]["name"] == seen[-1]["name"] == "streamed"
    bad = f"ws://127.0.0.1:{port}/v1/events?types=workflows"
    with connect(bad) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_many_sinks_finishing_together_end_the_workflow_once_on_postgres(
    pg_url: str,
) -> None:
    """A group of 300 (300 sinks) on two workers of one-statement completions: the
    sinks' count reaches 0 exactly once, so one ``succeeded``."""
    app = App(settings=make_settings(pg_url))
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    async with running(app) as harness:
        harness.start_worker(concurrency=16)
        harness.start_worker(concurrency=16)
        with harness.store.events.subscribe_workflows(maxsize=10_000) as feed:
            handle = await chronoq.group(*(t["noop"].s(i=i) for i in range(300))).adelay()
            events = await next_workflow_events(feed, "succeeded", timeout=60)
            assert await asyncio.wait_for(handle.aresult(), 10) == list(range(300))
            await harness.stop_workers()  # every completion announced
            while not feed.queue.empty():
                events += feed.queue.get_nowait()
        async with harness.store.conn() as c:
            rows = await c.fetch("SELECT sinks, outcome FROM workflows WHERE id = $1", handle.id)
    assert [e.status for e in events].count("succeeded") == 1
    assert [e.status for e in events].count("step_finished") == 300
    assert [tuple(r) for r in rows] == [(0, "succeeded")]


async def test_a_workflow_retry_reruns_its_dead_steps(app: App, harness: Harness) -> None:
    runs: Counter[str] = Counter()
    t = register(app, runs, [])
    harness.start_worker()
    flow = chronoq.chain(t["add"].s(x=1), t["boom"].s(), t["add"].s(x=5))
    handle = await flow.adelay()
    with pytest.raises(WorkflowFailed):
        await asyncio.wait_for(handle.aresult(recheck_seconds=NEVER), 20)

    def fixed(result: int) -> int:
        return result * 10

    app.tasks["boom"].fn = fixed
    await harness.stop_workers()
    harness.start_worker()
    answer = await harness.http.post(f"/v1/workflows/{handle.id}/retry")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "running"
    assert await asyncio.wait_for(handle.aresult(), 20) == 1 * 10 + 5
    assert runs["add"] == 2  # the first step is not run again
    missing = await harness.http.post(f"/v1/workflows/{'0' * 8}-0000-7000-8000-{'0' * 12}/retry")
    assert missing.status_code == 404


async def test_workflow_events_cross_the_redis_bridge_on_their_own_feed() -> None:
    url = "redis://127.0.0.1:6379/0"
    sender, receiver = EventBus(url), EventBus(url)
    await sender.start()
    await receiver.start()
    try:
        with receiver.subscribe_workflows() as flows, receiver.subscribe() as tasks:
            await asyncio.sleep(0.3)  # let the pub/sub subscription settle
            event = WorkflowEvent(
                "w1", "step_finished", time.time(), "ns", node="a", task_id="t1", error="x"
            )
            sender.publish_workflows([event])
            [got] = await asyncio.wait_for(anext(flows), 5)
            assert abs(got.at - event.at) < 1e-5
            got.at = event.at
            assert got == event and got.to_wire()["type"] == "workflow"
            assert tasks.queue.empty(), "task subscribers must not get workflow events"
    finally:
        await sender.close()
        await receiver.close()
