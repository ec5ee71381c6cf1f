"""Tracing (chronoq.tracing): the submission's trace context goes with the task, and each
attempt's run span is its child: in process with the SDK's in-memory exporter, and over
real processes (API + workers on PostgreSQL) with the console exporter writing to a log."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from chronoq import App, TaskFailed, current_task, tracing
from chronoq.grpc.v1 import chronoq_pb2 as pb
from chronoq.logs import JsonFormatter
from chronoq.models import TaskCreate
from chronoq.store.records import NewTask
from tests.conftest import make_settings, running
from tests.processes import Proc, cli, free_port, wait_ready
from tests.test_grpc import serving


def _traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def _ids(traceparent: str | None) -> list[str]:
    """The trace and parent ids of a traceparent (its flags may say more than sampled)."""
    assert traceparent is not None
    return traceparent.split("-")[1:3]


def test_wanted_follows_the_standard_variables() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"CHRONOQ_TRACING": "1"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "CHRONOQ_TRACING": "0"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "CHRONOQ_TRACING": "1"})
    assert not tracing.wanted({"CHRONOQ_TRACING": "1", "OTEL_SDK_DISABLED": "true"})


def test_invalid_traceparents_are_ignored() -> None:
    good = _traceparent(0xABC, 0xDEF)
    assert tracing.valid(good) == good
    assert tracing.valid(good.upper()) == good
    for bad in (None, "", "garbage", _traceparent(0, 1), _traceparent(1, 0), "01" + good[2:]):
        assert tracing.valid(bad) is None


def test_off_no_context_is_stored() -> None:
    assert tracing.tracer is None
    new = NewTask.of(TaskCreate(name="t"), 0.0, 0.0)
    assert new.traceparent is None
    assert NewTask.of(TaskCreate(name="t"), 0.0, 0.0, schedule_id="s", slot=1.0).traceparent is None


async def test_off_a_submission_stores_its_own_traceparent_or_none() -> None:
    """Without tracing, a request's traceparent goes with its task; one without any
    stores none, even inside a context that carries another's (it is not inherited)."""
    assert tracing.tracer is None
    mine = _traceparent(0x123, 0x456)

    async def submitted(traceparent: str | None) -> str | None:
        with tracing.submit_span(traceparent, "http"):
            return NewTask.of(TaskCreate(name="t"), 0.0, 0.0).traceparent

    assert await submitted(mine) == mine
    assert await submitted(None) is None
    other = _traceparent(0x789, 0xABC)
    assert await tracing.carrying(submitted(None), other) is None
    assert await tracing.carrying(submitted(mine), other) == mine


def test_caller_span_is_stored_and_slots_start_new_traces(
    exported: InMemorySpanExporter,
) -> None:
    assert tracing.tracer is not None
    with tracing.tracer.start_as_current_span("caller") as caller:
        new = NewTask.of(TaskCreate(name="t"), 0.0, 0.0)
        fired = NewTask.of(TaskCreate(name="t"), 0.0, 0.0, schedule_id="nightly", slot=60.0)
        again = NewTask.of(TaskCreate(name="t"), 0.0, 0.0, schedule_id="nightly", slot=120.0)
    context = caller.get_span_context()
    assert _ids(new.traceparent) == _ids(_traceparent(context.trace_id, context.span_id))
    assert fired.traceparent is not None and again.traceparent is not None
    fire_traces = {fired.traceparent.split("-")[1], again.traceparent.split("-")[1]}
    assert len(fire_traces) == 2 and f"{context.trace_id:032x}" not in fire_traces
    fires = [s for s in exported.get_finished_spans() if s.name == "chronoq.fire"]
    assert [s.parent for s in fires] == [None, None]
    assert [s.attributes["chronoq.slot"] for s in fires if s.attributes] == [60.0, 120.0]


async def test_run_spans_are_children_of_the_submission_and_retries_siblings(
    exported: InMemorySpanExporter, pg_url: str
) -> None:
    app = App(settings=make_settings(pg_url))
    lines: list[str] = []

    @app.task("flaky")
    async def flaky() -> int:
        attempt = current_task.get().attempt
        assert tracing.tracer is not None
        with tracing.tracer.start_as_current_span("handler.work"):
            record = logging.LogRecord("t", logging.INFO, "", 0, "inside", (), None)
            lines.append(JsonFormatter().format(record))
        if attempt == 1:
            raise TaskFailed("first attempt fails")
        return attempt

    caller_trace, caller_span = secrets.randbits(128), secrets.randbits(64)
    async with running(app) as h:
        h.start_scheduler()  # it makes the retry due
        h.start_worker()
        response = await h.http.post(
            "/v1/tasks",
            json={"name": "flaky", "backoff": {"base": 0.05, "jitter": 0}},
            headers={"traceparent": _traceparent(caller_trace, caller_span)},
        )
        assert response.status_code == 201, response.text
        task = response.json()
        assert (await h.wait_for(task["id"], "succeeded"))["attempts"] == 2
    spans = exported.get_finished_spans()
    assert {s.context.trace_id for s in spans if s.context} == {caller_trace}
    (submit,) = [s for s in spans if s.name == "chronoq.submit"]
    assert submit.parent is not None and submit.parent.span_id == caller_span
    runs = sorted(
        (s for s in spans if s.name == "chronoq.run flaky"),
        key=lambda s: _attribute(s, "chronoq.attempt"),
    )
    assert submit.context is not None
    assert [s.parent.span_id if s.parent else None for s in runs] == [submit.context.span_id] * 2
    first, second = runs
    assert _attribute(first, "chronoq.task_id") == task["id"]
    assert _attribute(first, "chronoq.queue") == "default"
    assert _attribute(first, "chronoq.outcome") == "failed"
    assert first.status.status_code is StatusCode.ERROR
    assert "first attempt fails" in (first.status.description or "")
    assert _attribute(second, "chronoq.outcome") == "succeeded"
    assert second.status.status_code is not StatusCode.ERROR
    works = [s for s in spans if s.name == "handler.work"]
    assert sorted(s.parent.span_id for s in works if s.parent) == sorted(
        s.context.span_id for s in runs if s.context
    )
    logged = [json.loads(line) for line in lines]
    assert {entry["trace_id"] for entry in logged} == {f"{caller_trace:032x}"}
    assert sorted(entry["span_id"] for entry in logged) == sorted(
        f"{s.context.span_id:016x}" for s in works if s.context
    )


def test_sync_delay_carries_the_callers_context(
    exported: InMemorySpanExporter, pg_url: str
) -> None:
    app = App(settings=make_settings(pg_url))

    @app.task("noop")
    async def noop() -> None:
        return None

    assert tracing.tracer is not None
    try:
        with tracing.tracer.start_as_current_span("caller") as caller:
            handle = noop.delay()
        stored = app.run_sync(app.store.get_task(handle.id))
    finally:
        app.run_sync(app.close())
    context = caller.get_span_context()
    assert _ids(stored.traceparent) == _ids(_traceparent(context.trace_id, context.span_id))


def _attribute(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes[key]


def _spans(*logs: Path) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (one JSON object per line) among the logs."""
    found = []
    for log in logs:
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"context"' in line:
                with_context = json.loads(line)
                if "span_id" in with_context.get("context", {}):
                    found.append(with_context)
    return found


def _finished(http: httpx.Client, task_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("succeeded", "dead") or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def _root(span: dict[str, Any], spans: list[dict[str, Any]]) -> str:
    """The parent id of ``span``'s oldest ancestor among ``spans``: the caller's span."""
    by_id = {s["context"]["span_id"]: s for s in spans}
    parent: str = span["parent_id"]
    while parent in by_id:
        parent = by_id[parent]["parent_id"]
    return _hex(parent)


def _hex(value: str) -> str:
    return value.removeprefix("0x")


def test_one_trace_links_submit_and_runs_across_processes(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "CHRONOQ_APP": "tests.apps.traced:app",
        "CHRONOQ_LOG_LEVEL": "warning",
        "CHRONOQ_LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "console",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    created = cli("keys", "create", "ci", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    api = Proc(["api", "--port", str(port)], env, tmp_path / "api.log")
    procs.append(api)
    procs.append(Proc(["scheduler"], env, tmp_path / "scheduler.log"))  # retries come due
    procs.append(Proc(["worker", "--queues", "default"], env, tmp_path / "async.log"))
    procs.append(
        Proc(
            ["worker", "--queues", "proc", "--pool", "process", "--processes", "1"],
            env,
            tmp_path / "process.log",
        )
    )
    wait_ready(url, api)
    caller = {queue: (secrets.randbits(128), secrets.randbits(64)) for queue in ("default", "proc")}
    ids = {}
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as http:
        for queue, (trace_id, span_id) in caller.items():
            response = http.post(
                "/v1/tasks",
                json={"name": "flaky", "queue": queue, "backoff": {"base": 0.1, "jitter": 0}},
                headers={"traceparent": _traceparent(trace_id, span_id)},
            )
            assert response.status_code == 201, response.text
            ids[queue] = response.json()["id"]
        for task_id in ids.values():
            assert _finished(http, task_id)["status"] == "succeeded"
    for proc in procs:
        assert proc.terminate() == 0, proc.output()
    logs = (tmp_path / "api.log", tmp_path / "async.log", tmp_path / "process.log")
    spans = _spans(*logs)
    for queue, (trace_id, span_id) in caller.items():
        mine = [s for s in spans if _hex(s["context"]["trace_id"]) == f"{trace_id:032x}"]
        (submit,) = [s for s in mine if s["name"] == "chronoq.submit"]
        # under FastAPI's own request spans (it traces when a provider is set), whose
        # root is the child of the caller's span
        assert _root(submit, mine) == f"{span_id:016x}"
        runs = sorted(
            (s for s in mine if s["name"] == "chronoq.run flaky"),
            key=lambda s: int(s["attributes"]["chronoq.attempt"]),
        )
        assert [s["attributes"]["chronoq.attempt"] for s in runs] == [1, 2], (queue, mine)
        assert {s["parent_id"] for s in runs} == {submit["context"]["span_id"]}
        assert {s["attributes"]["chronoq.task_id"] for s in runs} == {ids[queue]}
        assert [s["attributes"]["chronoq.outcome"] for s in runs] == ["failed", "succeeded"]
        assert [s["status"]["status_code"] for s in runs] == ["ERROR", "UNSET"]
        works = [s for s in mine if s["name"] == "handler.work"]
        assert sorted(s["parent_id"] for s in works) == sorted(
            s["context"]["span_id"] for s in runs
        ), (queue, "the handler's spans nest under the run spans")
    logged = [
        json.loads(line)
        for line in (tmp_path / "async.log").read_text().splitlines()
        if line.startswith("{") and "inside attempt" in line
    ]
    assert len(logged) == 2
    assert {entry["trace_id"] for entry in logged} == {f"{caller['default'][0]:032x}"}


def test_import_chronoq_does_not_import_opentelemetry() -> None:
    code = "import chronoq, chronoq.app, sys; print(any('opentelemetry' in m for m in sys.modules))"
    found = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console"},
        timeout=60,
    )
    assert found.stdout.strip() == "False"


async def test_grpc_metadata_traceparent_is_the_parent(
    exported: InMemorySpanExporter, pg_url: str
) -> None:
    caller_trace, caller_span = secrets.randbits(128), secrets.randbits(64)
    metadata = (("traceparent", _traceparent(caller_trace, caller_span)),)  # no auth
    async with serving(App(settings=make_settings(pg_url))) as served:
        spec = pb.TaskSpec(name="add", payload_json='{"a": 1, "b": 2}')
        one = await served.stub.Submit(pb.SubmitRequest(task=spec), metadata=metadata)
        two = await served.stub.SubmitBatch(
            pb.SubmitBatchRequest(tasks=[spec, spec]), metadata=metadata
        )
        stored = [
            await served.harness.store.get_task(task_id)
            for task_id in (one.task.id, *(t.id for t in two.items))
        ]
    submits = [s for s in exported.get_finished_spans() if s.name == "chronoq.submit"]
    assert len(submits) == 2
    for span in submits:
        assert span.parent is not None and span.parent.span_id == caller_span
        assert span.context is not None and span.context.trace_id == caller_trace
        assert _attribute(span, "chronoq.transport") == "grpc"
    contexts = [s.context for s in submits if s.context]
    assert [_ids(t.traceparent) for t in stored] == [
        _ids(_traceparent(c.trace_id, c.span_id)) for c in (contexts[0], contexts[1], contexts[1])
    ]


async def test_an_api_that_does_not_trace_stores_the_callers_traceparent(pg_url: str) -> None:
    assert tracing.tracer is None
    header = _traceparent(secrets.randbits(128), secrets.randbits(64))
    async with running(App(settings=make_settings(pg_url))) as h:
        sent = await h.http.post("/v1/tasks", json={"name": "t"}, headers={"traceparent": header})
        bad = await h.http.post("/v1/tasks", json={"name": "t"}, headers={"traceparent": "junk"})
        assert sent.status_code == bad.status_code == 201
        assert (await h.store.get_task(sent.json()["id"])).traceparent == header
        assert (await h.store.get_task(bad.json()["id"])).traceparent is None
