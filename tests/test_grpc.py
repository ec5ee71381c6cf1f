"""The gRPC API: a real grpcio client against the real grpc.aio server, beside the REST
API of the same process (same keys, same errors), and ``chronoq api --grpc-port`` as a
real process on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chronoq import App
from chronoq.api.auth import key_cache
from chronoq.api.ratelimit import limits_of
from chronoq.grpc import generate
from chronoq.grpc.server import GrpcServer
from chronoq.grpc.v1 import chronoq_pb2 as pb
from chronoq.grpc.v1 import chronoq_pb2_grpc as pb_grpc
from tests.conftest import Harness, make_settings, running
from tests.processes import ROOT, Proc, cli, free_port, start_dev, wait_ready


@dataclass
class Served:
    """A harness (REST over ASGI, workers) whose app also serves gRPC on ``target``."""

    harness: Harness
    server: GrpcServer
    channel: grpc.aio.Channel

    @property
    def stub(self) -> pb_grpc.ChronoqAsyncStub:
        return pb_grpc.ChronoqStub(self.channel)

    async def key(self, scopes: list[str], namespace: str | None = None) -> str:
        _, secret = await self.harness.store.keys.create("t", scopes, namespace)
        return str(secret)


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[Served]:
    @app.task("add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task("boom", max_attempts=1)
    def boom() -> None:
        raise RuntimeError("boom")

    async with running(app) as harness:
        _, admin = await harness.store.keys.create("harness", ["admin"])
        harness.http.headers["authorization"] = f"Bearer {admin}"  # for its wait_for()
        api = harness.http._transport.app  # type: ignore[attr-defined]
        server = GrpcServer(
            app, "127.0.0.1", 0, keys=key_cache(api), limits=limits_of(api), grace=1
        )
        await server.start()
        job = asyncio.create_task(server.serve())
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Served(harness, server, channel)
        finally:
            await channel.close()
            server.stop()
            await job


@pytest.fixture
async def served(db_url: str) -> AsyncIterator[Served]:
    async with serving(App(settings=make_settings(db_url, auth=True))) as s:
        yield s


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def error_body(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    trailers = dict(exc.trailing_metadata() or ())
    body: dict[str, Any] = json.loads(trailers["chronoq-error"])
    return body


async def test_submit_get_list_cancel_retry(served: Served) -> None:
    stub, h = served.stub, served.harness
    auth = bearer(await served.key(["write"]))
    spec = pb.TaskSpec(name="add", payload_json='{"a": 1, "b": 2}', idempotency_key="k1")
    first = await stub.Submit(pb.SubmitRequest(task=spec), metadata=auth)
    assert first.created and first.task.status == "queued" and first.task.namespace == "default"
    assert json.loads(first.task.payload_json) == {"a": 1, "b": 2}  # integers stay integers
    again = await stub.Submit(pb.SubmitRequest(task=spec), metadata=auth)
    assert not again.created and again.task.id == first.task.id
    h.start_worker()

    done = await h.wait_for(first.task.id, "succeeded")
    got = await stub.Get(pb.GetRequest(task_id=first.task.id), metadata=auth)
    assert got.status == "succeeded" and json.loads(got.result_json) == 3 == done["result"]
    assert [a.outcome for a in got.attempt_history] == ["succeeded"]
    assert got.created_at.ToDatetime(UTC) == datetime.fromisoformat(done["created_at"])

    later = pb.TaskSpec(name="add", payload_json='{"a": 2, "b": 2}', delay_seconds=3600)
    batch = await stub.SubmitBatch(pb.SubmitBatchRequest(tasks=[later, later]), metadata=auth)
    assert [t.status for t in batch.items] == ["scheduled", "scheduled"]
    assert list(batch.created) == [True, True]

    page = await stub.List(pb.ListRequest(limit=2), metadata=auth)
    assert [t.id for t in page.items] == [batch.items[1].id, batch.items[0].id]
    rest = await stub.List(pb.ListRequest(limit=2, cursor=page.next_cursor), metadata=auth)
    assert [t.id for t in rest.items] == [first.task.id] and not rest.HasField("next_cursor")
    only = await stub.List(pb.ListRequest(status="succeeded"), metadata=auth)
    assert [t.id for t in only.items] == [first.task.id]

    cancelled = await stub.Cancel(pb.CancelRequest(task_id=batch.items[0].id), metadata=auth)
    assert cancelled.status == "cancelled"
    twice = await refusal(stub.Cancel(pb.CancelRequest(task_id=batch.items[0].id), metadata=auth))
    rest_twice = await h.http.post(f"/v1/tasks/{batch.items[0].id}/cancel", headers=dict(auth))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION and rest_twice.status_code == 409
    assert error_body(twice) == rest_twice.json()["error"]

    dead = await stub.Submit(
        pb.SubmitRequest(task=pb.TaskSpec(name="boom", max_attempts=1)), metadata=auth
    )
    await h.wait_for(dead.task.id, "dead")
    retried = await stub.Retry(pb.RetryRequest(task_id=dead.task.id), metadata=auth)
    assert retried.status == "queued"
    await h.wait_for(dead.task.id, "dead")  # it fails again: it did run a second time
    assert (
        len((await stub.Get(pb.GetRequest(task_id=dead.task.id), metadata=auth)).attempt_history)
        == 2
    )


async def test_auth_scopes_and_namespaces(served: Served) -> None:
    stub = served.stub
    missing = await refusal(stub.List(pb.ListRequest()))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert str(missing.details()).startswith("missing API key: send 'Authorization: Bearer <key>'")
    wrong = await refusal(stub.List(pb.ListRequest(), metadata=bearer("cq_nope_nope")))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.details() == "invalid or revoked API key"
    not_bearer = await refusal(stub.List(pb.ListRequest(), metadata=(("authorization", "x"),)))
    assert not_bearer.code() == grpc.StatusCode.UNAUTHENTICATED

    reader = bearer(await served.key(["read"]))
    assert (await stub.List(pb.ListRequest(), metadata=reader)).items == []
    denied = await refusal(
        stub.Submit(pb.SubmitRequest(task=pb.TaskSpec(name="add")), metadata=reader)
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied.details() == "this API key lacks the 'write' scope"
    assert error_body(denied)["code"] == "forbidden"

    team_a = bearer(await served.key(["write"], "team-a"))
    team_b = bearer(await served.key(["write"], "team-b"))
    admin = bearer(await served.key(["admin"]))
    mine = (await stub.Submit(pb.SubmitRequest(task=pb.TaskSpec(name="x")), metadata=team_a)).task
    theirs = (await stub.Submit(pb.SubmitRequest(task=pb.TaskSpec(name="x")), metadata=team_b)).task
    assert (mine.namespace, theirs.namespace) == ("team-a", "team-b")
    listed = await stub.List(pb.ListRequest(), metadata=team_a)
    assert [t.id for t in listed.items] == [mine.id]
    everyone = await stub.List(pb.ListRequest(), metadata=admin)
    assert {t.id for t in everyone.items} == {mine.id, theirs.id}
    for call in (
        stub.Get(pb.GetRequest(task_id=theirs.id), metadata=team_a),
        stub.Cancel(pb.CancelRequest(task_id=theirs.id), metadata=team_a),
        stub.Retry(pb.RetryRequest(task_id=theirs.id), metadata=team_a),
    ):
        hidden = await refusal(call)
        assert hidden.code() == grpc.StatusCode.NOT_FOUND
        assert hidden.details() == f"no task with id {theirs.id}"
    # the same key over REST sees the same
    rest = await served.harness.http.get(f"/v1/tasks/{theirs.id}", headers=dict(team_a))
    assert rest.status_code == 404 and rest.json()["error"]["message"] == hidden.details()


def _stamp(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text))
    return stamp


#: (REST body, the same as a TaskSpec)
BAD_SPECS: list[tuple[dict[str, Any], pb.TaskSpec]] = [
    ({"name": ""}, pb.TaskSpec(name="")),
    ({"name": "a b"}, pb.TaskSpec(name="a b")),
    ({"name": "x", "priority": 5000}, pb.TaskSpec(name="x", priority=5000)),
    ({"name": "x", "queue": ""}, pb.TaskSpec(name="x", queue="")),
    ({"name": "x", "max_attempts": 0}, pb.TaskSpec(name="x", max_attempts=0)),
    (
        {"name": "x", "backoff": {"factor": 0.5}},
        pb.TaskSpec(name="x", backoff=pb.Backoff(factor=0.5)),
    ),
    ({"name": "x", "timeout_seconds": -1}, pb.TaskSpec(name="x", timeout_seconds=-1)),
    (
        {"name": "x", "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5},
        pb.TaskSpec(name="x", run_at=_stamp("2030-01-01T00:00:00+00:00"), delay_seconds=5),
    ),
    ({"name": "x", "delay_seconds": math.inf}, pb.TaskSpec(name="x", delay_seconds=math.inf)),
    ({"name": "x", "payload": [1]}, pb.TaskSpec(name="x", payload_json="[1]")),
    ({"name": "x", "idempotency_key": "a\x00"}, pb.TaskSpec(name="x", idempotency_key="a\x00")),
    (
        {"name": "x", "payload": {"big": "y" * 300_000}},
        pb.TaskSpec(name="x", payload_json=json.dumps({"big": "y" * 300_000})),
    ),
]


@pytest.mark.parametrize("index", range(len(BAD_SPECS)))
async def test_validation_errors_are_the_rest_errors(served: Served, index: int) -> None:
    body, spec = BAD_SPECS[index]
    auth = bearer(await served.key(["write"]))
    over_rest = await served.harness.http.post(
        "/v1/tasks",
        content=json.dumps(body, allow_nan=True),
        headers={**dict(auth), "content-type": "application/json"},
    )
    refused = await refusal(served.stub.Submit(pb.SubmitRequest(task=spec), metadata=auth))
    assert over_rest.status_code in (413, 422), over_rest.text
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details() == over_rest.json()["error"]["message"]
    assert error_body(refused) == over_rest.json()["error"]


async def test_other_refusals(served: Served) -> None:
    stub, http = served.stub, served.harness.http
    auth = bearer(await served.key(["write"]))
    cases = [
        (stub.Get(pb.GetRequest(task_id="nope"), metadata=auth), "/v1/tasks/nope"),
        (stub.List(pb.ListRequest(limit=0), metadata=auth), "/v1/tasks?limit=0"),
        (stub.List(pb.ListRequest(status="bogus"), metadata=auth), "/v1/tasks?status=bogus"),
        (stub.List(pb.ListRequest(cursor="x"), metadata=auth), "/v1/tasks?cursor=x"),
        # NUL reaches no database over either API
        (stub.List(pb.ListRequest(queue="a\x00"), metadata=auth), "/v1/tasks?queue=a%00"),
        (stub.List(pb.ListRequest(name="\x00"), metadata=auth), "/v1/tasks?name=%00"),
    ]
    for call, path in cases:
        refused = await refusal(call)
        answer = await http.get(path, headers=dict(auth))
        assert answer.status_code == 422 and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_body(refused) == answer.json()["error"], path
    bad_json = await refusal(
        stub.Submit(pb.SubmitRequest(task=pb.TaskSpec(name="x", payload_json="{")), metadata=auth)
    )
    assert bad_json.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(bad_json.details()).startswith("payload_json is not valid JSON")
    in_batch = await refusal(
        stub.SubmitBatch(
            pb.SubmitBatchRequest(
                tasks=[pb.TaskSpec(name="x"), pb.TaskSpec(name="x", priority=-5000)]
            ),
            metadata=auth,
        )
    )
    assert in_batch.details() == "tasks.1.priority: Input should be greater than or equal to -1000"
    huge = pb.TaskSpec(name="x", payload_json=json.dumps({"big": "y" * 700_000}))
    too_large = await refusal(stub.Submit(pb.SubmitRequest(task=huge), metadata=auth))
    assert too_large.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpcio's own message limit
    empty = await refusal(stub.SubmitBatch(pb.SubmitBatchRequest(), metadata=auth))
    rest_empty = await http.post("/v1/tasks/batch", json={"tasks": []}, headers=dict(auth))
    assert error_body(empty) == rest_empty.json()["error"]


async def test_rate_limit_is_resource_exhausted(db_url: str) -> None:
    settings = make_settings(db_url, auth=True, rate_limit=0.01, rate_limit_burst=2)
    async with serving(App(settings=settings)) as served:
        auth = bearer(await served.key(["read"]))
        await served.stub.List(pb.ListRequest(), metadata=auth)
        # the REST API and gRPC spend from one bucket per key
        assert (await served.harness.http.get("/v1/tasks", headers=dict(auth))).status_code == 200
        limited = await refusal(served.stub.List(pb.ListRequest(), metadata=auth))
        assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many requests with this API key" in str(limited.details())
        assert int(dict(limited.trailing_metadata() or ())["retry-after"]) >= 1


async def _events(call: Any, *until: str) -> list[pb.TaskEvent]:
    """Events from the stream ``call`` until one of each status in ``until`` came."""
    seen: list[pb.TaskEvent] = []
    async for event in call:
        seen.append(event)
        if set(until) <= {e.status for e in seen}:
            return seen
    raise AssertionError(f"stream ended after {seen}")


async def test_watch_events(served: Served) -> None:
    stub, h = served.stub, served.harness
    h.start_worker(queues=["default", "watched"])
    writer = bearer(await served.key(["write"]))
    team = bearer(await served.key(["write"], "team-a"))
    everything = stub.WatchEvents(pb.WatchEventsRequest(queue="watched"), metadata=writer)
    team_only = stub.WatchEvents(pb.WatchEventsRequest(), metadata=team)
    await everything.initial_metadata()  # subscribed: no event from here on is missed
    await team_only.initial_metadata()

    await stub.Submit(
        pb.SubmitRequest(task=pb.TaskSpec(name="add", payload_json='{"a":1,"b":1}')),
        metadata=writer,
    )
    watched = pb.TaskSpec(name="add", queue="watched", payload_json='{"a": 2, "b": 3}')
    task = (await stub.Submit(pb.SubmitRequest(task=watched), metadata=writer)).task
    seen = await asyncio.wait_for(_events(everything, "queued", "succeeded"), 10)
    assert {e.task_id for e in seen} == {task.id}  # the default-queue task is filtered out
    # (an in-process submit may publish "queued" after the worker's "running")
    assert sorted(e.status for e in seen) == ["queued", "running", "succeeded"]
    done = next(e for e in seen if e.status == "succeeded")
    assert done.attempt == 1 and done.HasField("duration") and done.name == "add"

    own = (await stub.Submit(pb.SubmitRequest(task=watched), metadata=team)).task
    mine = await asyncio.wait_for(_events(team_only, "queued", "succeeded"), 10)
    assert {e.task_id for e in mine} == {own.id} and {e.namespace for e in mine} == {"team-a"}

    unauthenticated = await refusal(_events(stub.WatchEvents(pb.WatchEventsRequest()), "x"))
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED

    served.server.stop()  # a stopping server ends open streams so clients reconnect elsewhere
    ended = await refusal(asyncio.wait_for(_events(everything, "never"), 10))
    assert ended.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_revoked_key_ends_its_stream(db_url: str) -> None:
    settings = make_settings(db_url, auth=True, key_cache_seconds=0.2)
    async with serving(App(settings=settings)) as served:
        key, secret = await served.harness.store.keys.create("t", ["read"])
        stream = served.stub.WatchEvents(pb.WatchEventsRequest(), metadata=bearer(secret))
        await stream.initial_metadata()
        await served.harness.store.keys.revoke(key.id)
        ended = await refusal(asyncio.wait_for(_events(stream, "never"), 10))
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ended.details() == "API key revoked"


async def test_health_and_reflection(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for name in ("", "chronoq.v1.Chronoq"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    unknown = await refusal(health.Check(health_pb2.HealthCheckRequest(service="nope")))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    store = served.harness.store
    await store.close()  # what /readyz answers 503 to
    try:
        down = await health.Check(health_pb2.HealthCheckRequest(service="chronoq.v1.Chronoq"))
        assert down.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await served.harness.http.get("/readyz")).status_code == 503
    finally:
        await store.open()
    back = await health.Check(health_pb2.HealthCheckRequest())
    assert back.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="chronoq.v1.Chronoq"),
    ]
    answers = [a async for a in reflection.ServerReflectionInfo(iter(requests))]
    services = {s.name for s in answers[0].list_services_response.service}
    assert {"chronoq.v1.Chronoq", "grpc.health.v1.Health"} <= services
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answers[1].file_descriptor_response.file_descriptor_proto
    ]
    ours = next(f for f in files if f.package == "chronoq.v1")
    methods = {m.name for m in ours.service[0].method}
    assert methods == {"Submit", "SubmitBatch", "Get", "List", "Cancel", "Retry", "WatchEvents"}
    assert next(m for m in ours.service[0].method if m.name == "WatchEvents").server_streaming


def test_generated_modules_are_current(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    made = sorted((tmp_path / "chronoq/grpc/v1").iterdir())
    assert [p.name for p in made] == [
        "chronoq_pb2.py",
        "chronoq_pb2.pyi",
        "chronoq_pb2_grpc.py",
        "chronoq_pb2_grpc.pyi",
    ]
    for path in made:
        committed = ROOT / "chronoq/grpc/v1" / path.name
        assert path.read_text() == committed.read_text(), (
            f"{committed} is stale: run python -m chronoq.grpc.generate"
        )


def test_import_chronoq_does_not_import_grpc() -> None:
    code = "import sys, chronoq, chronoq.cli, chronoq.runner; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_chronoq_api_serves_grpc_on_postgres(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    env = {"CHRONOQ_DATABASE_URL": pg_url, "CHRONOQ_LOG_LEVEL": "info"}
    assert cli("db", "upgrade", env=env).returncode == 0
    created = cli("keys", "create", "ci", "--scope", "write", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    port, grpc_port = free_port(), free_port()
    api = Proc(
        ["api", "--port", str(port), "--grpc-port", str(grpc_port)], env, tmp_path / "api.log"
    )
    procs.append(api)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, api)
    assert re.search(
        rf"serving gRPC \(chronoq.v1.Chronoq, health, reflection\) on 127\.0\.0\.1:{grpc_port}",
        api.output(),
    )

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service="chronoq.v1.Chronoq"), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.ChronoqStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.List(pb.ListRequest(), timeout=5)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        spec = pb.TaskSpec(name="nobody.serves.this", payload_json='{"n": 1}')
        made = stub.Submit(pb.SubmitRequest(task=spec), metadata=bearer(key), timeout=5)
    assert made.created and made.task.warnings  # no worker serves it: the REST warning too
    over_rest = httpx.get(
        f"{url}/v1/tasks/{made.task.id}", headers={"authorization": f"Bearer {key}"}
    )
    assert over_rest.json()["payload"] == {"n": 1} and over_rest.json()["warnings"] == list(
        made.task.warnings
    )
    assert api.terminate() == 0


def test_grpc_port_flag_is_validated(tmp_path: Path) -> None:
    bad = cli("api", "--grpc-port", "70000")
    assert bad.returncode == 2 and "--grpc-port" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = f"sqlite:///{tmp_path / 'busy.db'}"
        busy = cli(
            "dev", "--port", str(free_port()), "--grpc-port", str(port), "--database-url", db
        )
    assert busy.returncode == 1
    assert f"Error: cannot listen for gRPC on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr


def test_chronoq_dev_serves_grpc_without_keys(tmp_path: Path) -> None:
    dev, _ = start_dev(tmp_path, "--demo", "--grpc-port", "0")
    try:
        found = re.search(r"serving gRPC \(.*\) on 127\.0\.0\.1:(\d+)", dev.output())
        assert found, dev.output()
        with grpc.insecure_channel(f"127.0.0.1:{found[1]}") as channel:
            stub = pb_grpc.ChronoqStub(channel)
            events = stub.WatchEvents(pb.WatchEventsRequest(name="demo.add"), timeout=20)
            events.initial_metadata()  # subscribed
            spec = pb.TaskSpec(name="demo.add", payload_json='{"a": 2, "b": 5}')
            made = stub.Submit(pb.SubmitRequest(task=spec), timeout=5)  # auth is off: no key
            assert any(e.task_id == made.task.id and e.status == "succeeded" for e in events)
            events.cancel()
            got = stub.Get(pb.GetRequest(task_id=made.task.id), timeout=5)
        assert got.status == "succeeded" and json.loads(got.result_json) == 7
    finally:
        assert dev.terminate() == 0
