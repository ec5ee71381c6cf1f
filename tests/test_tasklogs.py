"""Task logs, progress and worker controls through the API, against real workers on SQLite
and PostgreSQL: what handlers log and print is captured per attempt (async handlers on
the loop, sync ones in threads, concurrent ones apart), capped, namespace-checked; progress
is stored and sent as events; a drain or stop reaches the worker through the store."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.sync.client import connect

from chronoq import App, current_task
from chronoq.events import LOG_EVENT_BYTES
from chronoq.logcapture import LIMIT
from tests.conftest import Harness, make_settings, running
from tests.processes import Proc, cli, free_port, wait_ready, wait_status
from tests.test_auth import bearer_protocol, serving
from tests.waiting import until, until_sync

handler_log = logging.getLogger("tests.handler")
handler_log.setLevel(logging.INFO)  # captured at the level the process logs: pytest sets none
#: gates a test opens to let a waiting ``steps`` task finish
GATES: dict[str, asyncio.Event] = {}


def build_app(db_url: str, **settings: Any) -> App:
    app = App(settings=make_settings(db_url, **settings))

    @app.task("chatty")
    async def chatty(tag: str, lines: int = 3, wait: float = 0.0) -> str:
        for n in range(lines):
            handler_log.info("%s log %d", tag, n)
            print(f"{tag} print {n}")
            await asyncio.sleep(wait or 0.001)  # interleave with the other attempts
        return tag

    @app.task("sync_chatty")
    def sync_chatty(tag: str) -> str:
        handler_log.warning("%s from a thread", tag)
        print(f"{tag} printed", end="")  # no newline: kept when the attempt ends
        return tag

    @app.task("flood")
    def flood() -> None:
        line = "x" * 1000
        for _ in range(200):  # 200 kB: over the 64 KiB cap
            print(line)

    @app.task("steps")
    async def steps(gate: str) -> None:
        ctx = current_task.get()
        ctx.progress(0.25, "step 1 of 4")
        handler_log.info("waiting at %s", gate)
        await GATES.setdefault(gate, asyncio.Event()).wait()
        ctx.progress(1.0, "done")

    return app


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    async with running(build_app(db_url)) as harness:
        yield harness


async def logs_of(h: Harness, task_id: str, **params: Any) -> dict[str, Any]:
    answer = await h.http.get(f"/v1/tasks/{task_id}/logs", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def texts(body: dict[str, Any]) -> list[str]:
    return [line["text"] for a in body["attempts"] for line in a["lines"]]


async def lines_arrive(h: Harness, task_id: str, count: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def enough() -> bool:
        found.update(await logs_of(h, task_id))
        return len(texts(found)) >= count

    await until(enough, f"task {task_id} never had {count} log lines")
    return found


async def test_concurrent_attempts_keep_their_own_lines(h: Harness) -> None:
    h.start_worker(concurrency=4)
    tasks = [await h.submit(name="chatty", payload={"tag": f"t{n}"}) for n in range(4)]
    sync = await h.submit(name="sync_chatty", payload={"tag": "s"})
    for task in [*tasks, sync]:
        await h.wait_for(task["id"], "succeeded")
    for n, task in enumerate(tasks):
        body = await lines_arrive(h, task["id"], 6)
        assert body["attempts"][0]["attempt"] == 1
        got = sorted(texts(body))
        assert got == sorted(
            [f"INFO tests.handler: t{n} log {i}" for i in range(3)]
            + [f"t{n} print {i}" for i in range(3)]
        ), got
        streams = {line["stream"] for line in body["attempts"][0]["lines"]}
        assert streams == {"log", "stdout"}
    body = await lines_arrive(h, sync["id"], 2)
    assert sorted(texts(body)) == ["WARNING tests.handler: s from a thread", "s printed"]


async def test_an_attempt_keeps_at_most_64_kib(h: Harness) -> None:
    h.start_worker()
    task = await h.submit(name="flood")
    await h.wait_for(task["id"], "succeeded")
    body = await lines_arrive(h, task["id"], 2)

    async def truncated() -> bool:
        body.update(await logs_of(h, task["id"]))
        return bool(body["attempts"][0]["truncated"])

    await until(truncated, "the flood was never marked truncated")
    lines = body["attempts"][0]["lines"]
    assert lines[-1]["stream"] == "truncated" and "64" not in lines[0]["text"]
    kept = sum(len(line["text"]) + 1 for line in lines[:-1])
    assert LIMIT - 1001 <= kept <= LIMIT, kept
    assert len(lines) - 1 == LIMIT // 1001


async def test_cursor_returns_only_newer_lines_and_bad_input_is_4xx(h: Harness) -> None:
    h.start_worker()
    task = await h.submit(name="chatty", payload={"tag": "c", "lines": 2})
    await h.wait_for(task["id"], "succeeded")
    body = await lines_arrive(h, task["id"], 4)
    again = await logs_of(h, task["id"], after=body["cursor"])
    assert again["attempts"] == [] and again["cursor"] == body["cursor"]
    assert (await logs_of(h, task["id"], attempt=2))["attempts"] == []
    bad = await h.http.get(f"/v1/tasks/{task['id']}/logs", params={"after": "x"})
    assert bad.status_code == 422
    assert [d["field"] for d in bad.json()["error"]["details"]] == ["after"]
    missing = await h.http.get("/v1/tasks/01890a5d-ac96-774b-bcce-b302099a8057/logs")
    assert missing.status_code == 404
    assert (await h.http.get("/v1/tasks/nope/logs")).status_code == 422


async def test_progress_is_stored_and_sent_as_events(h: Harness) -> None:
    h.start_worker()
    with h.store.events.subscribe_progress() as feed:
        gate = uuid.uuid4().hex
        task = await h.submit(name="steps", payload={"gate": gate})
        first = await asyncio.wait_for(feed.__anext__(), 10)
        assert (first[0].task_id, first[0].progress, first[0].message) == (
            task["id"],
            0.25,
            "step 1 of 4",
        )
        body = await logs_of(h, task["id"])
        assert body["status"] == "running"
        assert body["progress"]["progress"] == 0.25
        assert body["progress"]["message"] == "step 1 of 4"
        GATES.setdefault(gate, asyncio.Event()).set()
        last = await asyncio.wait_for(feed.__anext__(), 10)
        assert last[-1].progress == 1.0
    await h.wait_for(task["id"], "succeeded")
    body = await logs_of(h, task["id"])
    assert body["progress"]["progress"] == 1.0 and body["progress"]["message"] == "done"


async def log_events(ws: ClientConnection, within: float = 10) -> list[dict[str, Any]]:
    """The next message of a ``types=log`` socket: its log events."""
    async with asyncio.timeout(within):
        events: list[dict[str, Any]] = orjson.loads(await ws.recv())
    assert events and all(e["type"] == "log" for e in events), events
    return events


async def test_a_running_handler_s_lines_are_pushed_as_log_events(h: Harness) -> None:
    h.start_worker()
    gate = uuid.uuid4().hex
    async with (
        serving(h.app) as where,
        ws_connect(f"ws://{where}/v1/events?types=log&name=steps") as ws,
        ws_connect(f"ws://{where}/v1/events?types=log&name=other") as elsewhere,
    ):
        task = await h.submit(name="steps", payload={"gate": gate})
        [event] = await log_events(ws)
        # pushed while the handler still waits at its gate, not read after it finished
        assert (await h.get(task["id"]))["status"] == "running"
        assert (event["task_id"], event["name"], event["attempt"], event["seq"]) == (
            task["id"],
            "steps",
            1,
            1,
        )
        [line] = event["lines"]
        assert (line["stream"], line["text"]) == ("log", f"INFO tests.handler: waiting at {gate}")
        assert event["namespace"] == "default" and event["worker_id"] == h.workers[0][0].id
        # the event's cursor is the logs endpoint's: nothing came after it yet
        after = await logs_of(h, task["id"], after=f"{event['attempt']}.{event['seq']}")
        assert after["attempts"] == []
        GATES.setdefault(gate, asyncio.Event()).set()
        await h.wait_for(task["id"], "succeeded")
        with pytest.raises(TimeoutError):  # another handler's socket heard nothing
            await log_events(elsewhere, within=0.5)


async def test_log_events_are_capped_and_add_up_to_the_stored_lines(h: Harness) -> None:
    h.start_worker()
    async with serving(h.app) as where, ws_connect(f"ws://{where}/v1/events?types=log") as ws:
        task = await h.submit(name="flood")
        pushed: list[dict[str, Any]] = []
        while not pushed or pushed[-1]["lines"][-1]["stream"] != "truncated":
            pushed += await log_events(ws)
    assert [e["seq"] for e in pushed] == list(range(1, len(pushed) + 1))
    assert len(pushed) >= LIMIT // LOG_EVENT_BYTES
    for event in pushed:
        size = sum(len(line["text"].encode()) + 1 for line in event["lines"])
        assert size <= LOG_EVENT_BYTES, size
        assert len(orjson.dumps(event)) < 2 * LOG_EVENT_BYTES
    stored = await lines_arrive(h, task["id"], LIMIT // 1001 + 1)
    assert [x["text"] for e in pushed for x in e["lines"]] == texts(stored)


async def test_progress_outside_a_worker_is_a_no_op_and_checks_its_value() -> None:
    from chronoq.executors import TaskContext

    ctx = TaskContext("t", "n", "q", 1, 1, "w")
    ctx.progress(0.5)
    with pytest.raises(TypeError):
        ctx.progress("half")  # type: ignore[arg-type]


# -- namespaces and scopes -------------------------------------------------------------------
@pytest.fixture
async def secured(db_url: str) -> AsyncIterator[Harness]:
    async with running(build_app(db_url, auth=True)) as harness:
        yield harness


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_logs_are_namespace_checked(secured: Harness) -> None:
    _, alpha = await secured.store.keys.create("alpha", ["write"], namespace="alpha")
    _, beta = await secured.store.keys.create("beta", ["read"], namespace="beta")
    secured.start_worker()
    made = await secured.http.post(
        "/v1/tasks", json={"name": "chatty", "payload": {"tag": "a"}}, headers=bearer(alpha)
    )
    task_id = made.json()["id"]
    url = f"/v1/tasks/{task_id}/logs"

    async def logged() -> bool:
        answer = await secured.http.get(url, headers=bearer(alpha))
        return answer.status_code == 200 and len(texts(answer.json())) == 6

    await until(logged, "alpha never saw its task's lines")
    assert (await secured.http.get(url, headers=bearer(beta))).status_code == 404
    assert (await secured.http.get(url)).status_code == 401


async def test_log_events_keep_to_the_key_s_namespace(secured: Harness) -> None:
    _, alpha = await secured.store.keys.create("alpha", ["write"], namespace="alpha")
    _, beta = await secured.store.keys.create("beta", ["read"], namespace="beta")
    secured.start_worker()
    gate = uuid.uuid4().hex
    async with (
        serving(secured.app) as where,
        ws_connect(f"ws://{where}/v1/events?types=log", subprotocols=bearer_protocol(alpha)) as a,
        ws_connect(f"ws://{where}/v1/events?types=log", subprotocols=bearer_protocol(beta)) as b,
    ):
        made = await secured.http.post(
            "/v1/tasks", json={"name": "steps", "payload": {"gate": gate}}, headers=bearer(alpha)
        )
        [event] = await log_events(a)
        assert (event["task_id"], event["namespace"]) == (made.json()["id"], "alpha")
        GATES.setdefault(gate, asyncio.Event()).set()
        with pytest.raises(TimeoutError):  # another namespace's key hears none of it
            await log_events(b, within=0.5)


async def test_worker_controls_need_admin_and_a_known_worker(secured: Harness) -> None:
    _, writer = await secured.store.keys.create("writer", ["write"])
    _, bound = await secured.store.keys.create("bound", ["admin"], namespace="alpha")
    _, admin = await secured.store.keys.create("ops", ["admin"])
    worker = secured.start_worker(worker_id="w-controls")
    http = secured.http

    async def registered() -> bool:
        return (await http.get("/v1/workers/w-controls", headers=bearer(admin))).status_code == 200

    await until(registered, "the worker never registered")
    for what in ("drain", "stop"):
        url = f"/v1/workers/w-controls/{what}"
        assert (await http.post(url)).status_code == 401
        assert (await http.post(url, headers=bearer(writer))).status_code == 403
        assert (await http.post(url, headers=bearer(bound))).status_code == 403
        unknown = await http.post(f"/v1/workers/nobody/{what}", headers=bearer(admin))
        assert unknown.status_code == 404
    assert (await http.get("/v1/workers/nobody", headers=bearer(admin))).status_code == 404
    gate = uuid.uuid4().hex
    made = await http.post(
        "/v1/tasks", json={"name": "steps", "payload": {"gate": gate}}, headers=bearer(admin)
    )

    async def reported() -> bool:
        found = await http.get("/v1/workers/w-controls", headers=bearer(admin))
        return bool(found.json()["tasks"] == [made.json()["id"]])

    await until(reported, "the worker never reported its task")
    _, reader = await secured.store.keys.create("reader", ["read"], namespace="alpha")
    seen = (await http.get("/v1/workers", headers=bearer(reader))).json()
    assert [w["tasks"] for w in seen] == [[]]  # a bound key never sees others' task ids
    GATES.setdefault(gate, asyncio.Event()).set()
    stopped = await http.post("/v1/workers/w-controls/stop", headers=bearer(admin))
    assert stopped.status_code == 200 and stopped.json()["control"] == "stop"
    job = next(j for w, j in secured.workers if w is worker)
    await asyncio.wait_for(asyncio.shield(job), 10)
    gone = await http.get("/v1/workers/w-controls", headers=bearer(admin))
    assert gone.json()["status"] == "stopped"
    late = await http.post("/v1/workers/w-controls/drain", headers=bearer(admin))
    assert late.status_code == 409


async def test_drain_lets_the_running_task_finish_then_the_worker_exits(h: Harness) -> None:
    worker = h.start_worker(worker_id="w-drain")
    gate = uuid.uuid4().hex
    task = await h.submit(name="steps", payload={"gate": gate})
    await h.wait_for(task["id"], "running")

    async def reported() -> bool:
        answer = (await h.http.get("/v1/workers/w-drain")).json()
        return bool(answer["tasks"] == [task["id"]])

    await until(reported, "the worker never reported its running task")
    drained = await h.http.post("/v1/workers/w-drain/drain")
    assert drained.status_code == 200 and drained.json()["control"] == "drain"
    await until(lambda: _true(worker.draining), "the worker never heard the drain")
    other = await h.submit(name="chatty", payload={"tag": "later"})
    started = time.monotonic()
    GATES.setdefault(gate, asyncio.Event()).set()  # the running task may finish now
    await h.wait_for(task["id"], "succeeded")
    job = next(j for w, j in h.workers if w is worker)
    await asyncio.wait_for(asyncio.shield(job), 10)
    assert time.monotonic() - started < 10
    assert (await h.get(other["id"]))["status"] == "queued"  # never claimed after the drain
    assert (await h.http.get("/v1/workers/w-drain")).json()["status"] == "stopped"


async def _true(value: bool) -> bool:
    return value


# -- process pool ----------------------------------------------------------------------------
def test_process_pool_children_send_their_lines_and_progress(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        [
            "dev",
            "--app",
            "tests.apps.journal:app",
            "--pool",
            "process",
            "--processes",
            "2",
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp_path / 'pool.db'}",
        ],
        {"CHRONOQ_HEARTBEAT_SECONDS": "0.3", "CHRONOQ_LOG_FORMAT": "text"},
        tmp_path / "dev.log",
    )
    procs.append(proc)
    wait_ready(url, proc, timeout=40)
    with httpx.Client(base_url=url, timeout=10) as http:
        ids = {
            name: http.post(
                "/v1/tasks", json={"name": name, "payload": {"steps": 3, "pause": 0.05}}
            ).json()["id"]
            for name in ("journal.steps", "journal.sync_steps")
        }
        for task_id in ids.values():
            wait_status(url, task_id, "succeeded")

        def logs(task_id: str) -> dict[str, Any]:
            body: dict[str, Any] = http.get(f"/v1/tasks/{task_id}/logs").json()
            return body

        for name, task_id in ids.items():
            until_sync(lambda t=task_id: len(texts(logs(t))) >= 6, f"{name}'s lines")  # type: ignore[misc]
            body = logs(task_id)
            assert body["progress"]["progress"] == 1.0
            if name == "journal.steps":
                logged = [f"INFO tests.journal: job step {n} of 3" for n in (1, 2, 3)]
                printed = [f"job printed {n}" for n in (1, 2, 3)]
            else:
                logged = [f"WARNING tests.journal: sync step {n}" for n in (1, 2, 3)]
                printed = [f"sync printed {n}" for n in (1, 2, 3)]
            assert sorted(texts(body)) == sorted(logged + printed), body
        (worker,) = http.get("/v1/workers").json()
        assert len(worker["children"]) == 2, worker
        assert {c["state"] for c in worker["children"]} <= {"idle", "busy"}
        assert all(c["pid"] > 0 for c in worker["children"])

        # progress events on the WebSocket, from the child through the worker's buffer
        socket_url = f"ws://127.0.0.1:{port}/v1/events?types=progress&name=journal.steps"
        with connect(socket_url, open_timeout=10) as socket:
            watched = http.post(
                "/v1/tasks", json={"name": "journal.steps", "payload": {"steps": 3, "pause": 0.6}}
            ).json()["id"]
            seen: list[float] = []
            while not seen or seen[-1] < 1.0:
                for event in orjson.loads(socket.recv(timeout=10)):
                    assert event["type"] == "progress" and event["task_id"] == watched, event
                    seen.append(event["progress"])
        assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 2, seen

        # the CLI: the lines, the progress bar in `tasks get`, a drain
        shown = cli("tasks", "logs", ids["journal.steps"], "--url", url)
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout.splitlines()
        assert out[0] == "-- attempt 1" and out[1].endswith("INFO tests.journal: job step 1 of 3")
        assert out[-1] == f"[{'#' * 20}] 100%  step 3 of 3"
        got = cli("tasks", "get", ids["journal.sync_steps"], "--url", url)
        assert "progress  [####################] 100%  step 3" in got.stdout, got.stdout
        drained = cli("workers", "drain", worker["id"], "--url", url)
        assert drained.returncode == 0 and "asked worker" in drained.stdout, drained.stderr
        until_sync(
            lambda: (
                http.get("/v1/workers", params={"all": "true"}).json()[0]["status"] == "stopped"
            ),
            "the drained worker never stopped",
        )
        assert cli("workers", "drain", "nobody", "--url", url).returncode != 0


async def test_a_log_handler_on_the_wrapped_stderr_does_not_capture_twice(h: Harness) -> None:
    import sys

    h.start_worker()
    await until(lambda: _true(type(sys.stderr).__name__ == "Redirect"), "capture never began")
    late = logging.StreamHandler(sys.stderr)  # set up after capture began: writes to it
    handler_log.addHandler(late)
    try:
        task = await h.submit(name="sync_chatty", payload={"tag": "once"})
        await h.wait_for(task["id"], "succeeded")
        body = await lines_arrive(h, task["id"], 2)
    finally:
        handler_log.removeHandler(late)
    assert sorted(texts(body)) == ["WARNING tests.handler: once from a thread", "once printed"]
