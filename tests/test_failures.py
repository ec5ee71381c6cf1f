"""Failures that no retry can mend, and results the database will not take.

- A task no live worker has a handler for, a payload that does not fit the handler's
  signature, and ``TaskFailed(retry=False)`` end ``dead`` after one attempt, saying why.
- Workers advertise their handlers; a submission nobody serves carries a warning.
- Text the database cannot encode (lone surrogates, NUL) is stored visibly escaped; a row
  the store still refuses fails only its own task; a stopping worker never hangs on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chronoq import App, TaskFailed
from chronoq.models import TaskCreate
from chronoq.store import Store
from chronoq.store.workers import ServedCache
from chronoq.worker import Worker
from tests.conftest import PG_URL, Harness, drop_schema, make_settings, running
from tests.processes import Proc, cli, start_dev

FAST_RETRY = {"base": 0.01, "factor": 1, "jitter": 0}


async def wait_registered(harness: Harness, worker: Worker) -> None:
    deadline = time.monotonic() + 5
    while worker.id not in {w.id for w in await harness.store.workers.all()}:
        assert time.monotonic() < deadline, "worker never registered"
        await asyncio.sleep(0.02)


# -- permanent failures -----------------------------------------------------------------------
async def test_payload_that_does_not_fit_the_handler_is_dead_at_once(
    app: App, harness: Harness
) -> None:
    calls: list[dict[str, Any]] = []

    @app.task("add")
    def add(a: int, b: int) -> int:
        calls.append({"a": a, "b": b})
        return a + b

    harness.start_scheduler()
    harness.start_worker()
    missing = await harness.submit(name="add", payload={"a": 1}, max_attempts=5, backoff=FAST_RETRY)
    extra = await harness.submit(
        name="add", payload={"a": 1, "b": 2, "c": 3}, max_attempts=5, backoff=FAST_RETRY
    )
    fine = await harness.submit(name="add", payload={"a": 1, "b": 2})
    for task, why in (
        (missing, "missing a required argument: 'b'"),
        (extra, "got an unexpected keyword argument 'c'"),
    ):
        dead = await harness.wait_for(task["id"], "dead")
        assert dead["attempts"] == 1
        assert dead["error"].startswith("payload does not fit the handler "), dead["error"]
        assert "add(a: 'int', b: 'int')" in dead["error"] and why in dead["error"]
        assert dead["error"].endswith("(permanent failure: not retried)")
        [attempt] = dead["attempt_history"]
        assert attempt["outcome"] == "failed" and attempt["error"] == dead["error"]
        assert attempt["traceback"] is None
    assert (await harness.wait_for(fine["id"], "succeeded"))["result"] == 3
    assert calls == [{"a": 1, "b": 2}]  # the handler never ran for the others


async def test_type_error_inside_the_handler_is_retried(app: App, harness: Harness) -> None:
    """Only a payload that cannot bind is permanent: a TypeError the handler raises
    itself is an ordinary failure."""

    @app.task("typo")
    def typo(x: int) -> int:
        return len(x)  # type: ignore[arg-type]

    harness.start_scheduler()
    harness.start_worker()
    task = await harness.submit(name="typo", payload={"x": 1}, max_attempts=3, backoff=FAST_RETRY)
    dead = await harness.wait_for(task["id"], "dead")
    assert dead["attempts"] == 3
    assert dead["error"] == "TypeError: object of type 'int' has no len()"
    assert "Traceback" in dead["attempt_history"][0]["traceback"]


async def test_task_failed_without_retry_is_dead_at_once(app: App, harness: Harness) -> None:
    @app.task("gone")
    async def gone(retry: bool) -> None:
        raise TaskFailed("the invoice was deleted", retry=retry)

    harness.start_scheduler()
    harness.start_worker()
    final = await harness.submit(name="gone", payload={"retry": False}, max_attempts=5)
    again = await harness.submit(
        name="gone", payload={"retry": True}, max_attempts=2, backoff=FAST_RETRY
    )
    dead = await harness.wait_for(final["id"], "dead")
    assert dead["attempts"] == 1
    assert dead["error"] == "the invoice was deleted (permanent failure: not retried)"
    assert [a["outcome"] for a in dead["attempt_history"]] == ["failed"]
    assert (await harness.wait_for(again["id"], "dead"))["attempts"] == 2


async def test_no_handler_is_permanent_only_when_no_live_worker_has_it(
    app: App, harness: Harness
) -> None:
    """A worker without the handler fails the task for good only if no other live worker
    of the queue has it; else the attempt is retried (so the worker that has it gets it)."""
    harness.start_scheduler()
    worker = harness.start_worker()
    await wait_registered(harness, worker)
    nobody = await harness.submit(name="report", max_attempts=5, backoff=FAST_RETRY)
    dead = await harness.wait_for(nobody["id"], "dead")
    assert dead["attempts"] == 1
    assert dead["error"] == (
        f"no handler named 'report' on any live worker of queue "
        f"'default' (worker {worker.id} has: chronoq.http) "
        "(permanent failure: not retried)"
    )

    now = time.time()
    await harness.store.workers.register(
        "reporter", "elsewhere", 1, ["default"], 1, now, handlers=["report"]
    )
    await harness.store.workers.register("old", "elsewhere", 2, ["legacy"], 1, now)
    for queue in ("default", "legacy"):  # "old" did not say what it serves: maybe this
        task = await harness.submit(name="report", queue=queue, max_attempts=2, backoff=FAST_RETRY)
        if queue == "legacy":
            harness.start_worker(queues=["legacy"])
        dead = await harness.wait_for(task["id"], "dead")
        assert dead["attempts"] == 2, dead
        assert dead["attempt_history"][0]["error"].endswith(
            f"another worker of queue {queue!r} has one"
        )


# -- the registry and submission warnings ------------------------------------------------------
async def test_workers_advertise_their_handlers(app: App, harness: Harness) -> None:
    @app.task("resize")
    def resize() -> None: ...

    worker = harness.start_worker()
    await wait_registered(harness, worker)
    [info] = (await harness.http.get("/v1/workers")).json()
    assert info["handlers"] == ["chronoq.http", "resize"]


async def test_submission_no_live_worker_serves_carries_a_warning(
    app: App, harness: Harness
) -> None:
    @app.task("resize")
    def resize() -> None: ...

    worker = harness.start_worker(queues=["images"])
    await wait_registered(harness, worker)
    served = await harness.submit(name="resize", queue="images")
    assert served["warnings"] is None
    answer = await harness.http.post("/v1/tasks", json={"name": "rezise", "queue": "images"})
    assert answer.status_code == 201
    [warning] = answer.json()["warnings"]
    assert warning.startswith("no live worker of queue 'images' has a handler named 'rezise'")
    batch = await harness.http.post(
        "/v1/tasks/batch",
        json={
            "tasks": [
                {"name": "resize", "queue": "images"},
                {"name": "resize", "delay_seconds": 60},
            ]
        },
    )
    assert batch.status_code == 201
    first, second = batch.json()["items"]
    assert first["warnings"] is None
    assert second["warnings"] == [
        "no live worker serves queue 'default': the task waits "
        "until one with a handler named 'resize' starts"
    ]
    waiting = (await harness.http.get(f"/v1/tasks/{second['id']}")).json()
    assert waiting["warnings"] == second["warnings"]  # shown where the task is viewed
    done = await harness.wait_for(served["id"], "succeeded")
    assert done["warnings"] is None  # finished: nothing to warn about
    listed = (await harness.http.get("/v1/tasks")).json()["items"]
    assert all(t["warnings"] is None for t in listed)  # lists stay cheap


async def test_the_live_handler_set_is_cached(db_url: str) -> None:
    """The API reads the registry at most once per TTL; a worker that stopped
    heartbeating counts as gone."""
    async with running(App(settings=make_settings(db_url))) as harness:
        store: Store = harness.store
        clock = [0.0]
        cache = ServedCache(silent_after=30, ttl=2, clock=lambda: clock[0])
        assert not (await cache.get(store.workers)).serves("default", "x")
        await store.workers.register("w1", "h", 1, ["default"], 1, time.time(), handlers=["x"])
        clock[0] = 1.9
        assert not (await cache.get(store.workers)).serves("default", "x")  # cached
        clock[0] = 2.0
        assert (await cache.get(store.workers)).serves("default", "x")
        await store.workers.register("w2", "h", 2, ["quiet"], 1, time.time() - 31, handlers=["y"])
        clock[0] = 4.0
        assert not (await cache.get(store.workers)).serves("quiet", "y")


# -- unencodable text ------------------------------------------------------------------------
def _json_visible(text: str) -> str:
    """What a JSON column gives back: lone surrogates as \\udcxx escape text."""
    return "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _text_visible(text: str) -> str:
    """What a text column gives back: NUL as \\x00 too."""
    return _json_visible(text.replace("\x00", "\\x00"))


#: any code point, with lone surrogates and NUL well represented (``st.text`` drops
#: surrogates from an alphabet that mixes them with other characters)
ANY_TEXT = st.lists(
    st.one_of(st.characters(), st.characters(categories=["Cs"]), st.just("\x00")), max_size=30
).map("".join)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_any_text_is_stored_visibly_and_never_blocks_the_worker(kind: str, tmp_path: Path) -> None:
    """Arbitrary Unicode, lone surrogates and NUL included, through results (keys too),
    error messages, tracebacks and payloads, end to end through a worker."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    url = f"sqlite:///{tmp_path / 'text.db'}" if kind == "sqlite" else f"{PG_URL}?schema={schema}"
    app = App(settings=make_settings(url))
    texts: dict[str, str] = {}

    @app.task("make")
    def make(key: str) -> dict[str, Any]:
        return {"text": texts[key], texts[key]: [texts[key]]}

    @app.task("boom")
    def boom(key: str) -> None:
        raise ValueError(texts[key])

    @app.task("echo")
    def echo(**payload: Any) -> dict[str, Any]:
        return payload

    loop = asyncio.new_event_loop()
    harness = loop.run_until_complete(_started(app))

    async def finished(task_id: str) -> Any:
        deadline = time.monotonic() + 10
        while (record := await app.store.get_task(task_id)).status.value not in (
            "succeeded",
            "dead",
        ):
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.005)
        return record

    async def one(text: str) -> None:
        key = uuid.uuid4().hex
        texts[key] = text
        made, failed, echoed = await app.submit_many(
            [
                TaskCreate(name="make", payload={"key": key}),
                TaskCreate(name="boom", payload={"key": key}, max_attempts=1),
                TaskCreate(name="echo", payload={"t": text}),
            ]
        )
        visible = _json_visible(text)
        made_record = await finished(made.id)
        assert made_record.result == {"text": visible, visible: [visible]}
        failed_record = await finished(failed.id)
        assert failed_record.error == f"ValueError: {_text_visible(text)}"
        [attempt] = await app.store.get_attempts(failed.id)
        assert attempt.traceback is not None
        assert _text_visible(text) in attempt.traceback and attempt.traceback.encode()
        echoed_record = await finished(echoed.id)
        assert echoed_record.payload == {"t": visible} == echoed_record.result

    @settings(max_examples=25, deadline=None, database=None)
    @given(ANY_TEXT)
    @example("\udce9")
    @example("caf\udce9\x00\ud83d\ude00 \U0001f600")
    def check(text: str) -> None:
        loop.run_until_complete(one(text))

    try:
        check()
    finally:
        loop.run_until_complete(harness.close())
        if kind == "postgres":
            loop.run_until_complete(drop_schema(schema))
        loop.close()


async def _started(app: App) -> Harness:
    """The app open, with a worker."""
    await app.open()
    harness = Harness(app)
    harness.start_worker()
    return harness


async def test_schedule_payload_the_database_cannot_hold_is_a_422(harness: Harness) -> None:
    body = (
        '{"name": "nightly", "interval_seconds": 60, '
        '"task": {"name": "t", "payload": {"file": "caf\\udce9"}}}'
    )
    headers = {"content-type": "application/json"}
    answer = await harness.http.post("/v1/schedules", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error" and "surrogates" in error["message"]
    assert error["details"][0]["field"] == "task.payload"
    created = await harness.http.post(
        "/v1/schedules", json={"name": "nightly", "interval_seconds": 60, "task": {"name": "t"}}
    )
    assert created.status_code == 201
    patched = await harness.http.patch(
        "/v1/schedules/nightly",
        headers=headers,
        content='{"task": {"name": "t", "payload": {"file": "caf\\udce9"}}}',
    )
    assert patched.status_code == 422, patched.text
    huge = await harness.http.post(
        "/v1/schedules",
        json={  # the task payload limit holds
            "name": "huge",
            "interval_seconds": 60,
            "task": {"name": "t", "payload": {"x": "a" * 300_000}},
        },
    )
    assert huge.status_code == 413, huge.text


async def _refuse_in_postgres(store: Store, sqlstate: str) -> None:
    """A real refusal by the database: a trigger that rejects the end of an attempt whose
    result says ``"refuse me"`` (with ``sqlstate``)."""
    async with store.conn() as c:
        await c.execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
            "IF NEW.result LIKE '%refuse me%' THEN "
            f"RAISE EXCEPTION 'refusing %', NEW.task_id USING ERRCODE = '{sqlstate}'; "
            "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        await c.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON attempts FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


async def test_a_refused_row_fails_only_its_own_task(pg_url: str) -> None:
    app = App(settings=make_settings(pg_url))

    @app.task("echo")
    async def echo(text: str) -> str:
        await asyncio.sleep(0.05)  # finish together: one batch of results
        return text

    async with running(app) as harness:
        await _refuse_in_postgres(harness.store, "22000")  # data_exception
        harness.start_worker(concurrency=8)
        tasks = await app.submit_many(
            [TaskCreate(name="echo", payload={"text": f"fine {i}"}) for i in range(7)]
            + [TaskCreate(name="echo", payload={"text": "refuse me"}, max_attempts=1)]
        )
        for task in tasks[:-1]:
            assert (await harness.wait_for(task.id, "succeeded"))["attempts"] == 1
        dead = await harness.wait_for(tasks[-1].id, "dead")
        assert dead["error"].startswith("result could not be stored: DataError: refusing ")
        [attempt] = dead["attempt_history"]
        assert attempt["outcome"] == "failed" and attempt["result"] is None
        after = await app.submit(TaskCreate(name="echo", payload={"text": "later"}))
        assert (await harness.wait_for(after.id, "succeeded"))["result"] == "later"


async def test_stopping_worker_gives_up_on_results_it_cannot_record(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store keeps failing the write as if it could not take writes now (a
    serialization failure: retried, never taken for a refusal). SIGTERM must still stop the
    worker: it gives up after ``flush_seconds`` and says which results it did not record."""
    app = App(settings=make_settings(pg_url))

    @app.task("echo")
    def echo(text: str) -> str:
        return text

    async with running(app) as harness:
        await _refuse_in_postgres(harness.store, "40001")
        worker = harness.start_worker()
        worker.flush_seconds = 1.0
        task = await app.submit(TaskCreate(name="echo", payload={"text": "refuse me"}))
        deadline = time.monotonic() + 5
        while not worker.completions.pending:  # finished, its result not recorded
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        caplog.set_level(logging.ERROR, "chronoq.worker")
        started = time.monotonic()
        worker.stop()
        _, job = harness.workers.pop()
        await asyncio.wait_for(job, 10)
        assert time.monotonic() - started < 4
        assert f"stops with 1 results not recorded after 1s (tasks {task.id})" in caplog.text
        assert (await harness.get(task.id))["status"] == "running"  # its lease will lapse


def test_surrogate_error_beside_innocent_tasks_on_postgres(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """The issue's wedge: one task's error holds a lone surrogate. Its 30 neighbours run
    exactly once, its error is recorded, and SIGTERM stops the worker process."""
    record = tmp_path / "record.txt"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "RECORD_FILE": str(record),
        "CHRONOQ_APP": "tests.apps.failures:app",
        "CHRONOQ_LEASE_SECONDS": "3",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    worker = Proc(["worker", "--concurrency", "8"], env, tmp_path / "worker.log")
    procs.append(worker)

    async def submit_and_wait() -> tuple[list[str], Any]:
        async with App(pg_url) as app:
            specs = [TaskCreate(name="record", payload={"sleep": 0.05}) for _ in range(15)]
            specs += [TaskCreate(name="undecodable", max_attempts=1)]
            specs += [TaskCreate(name="record", payload={"sleep": 0.05}) for _ in range(15)]
            tasks = await app.submit_many(specs)
            deadline = time.monotonic() + 30
            while True:
                records = [await app.store.get_task(t.id) for t in tasks]
                if all(r.status.value in ("succeeded", "dead") for r in records):
                    break
                assert time.monotonic() < deadline, [r.status for r in records]
                await asyncio.sleep(0.1)
            bad = records[15]
            return [t.id for t in tasks if t.name == "record"], (
                bad,
                await app.store.get_attempts(bad.id),
            )

    innocent, (bad, attempts) = asyncio.run(submit_and_wait())
    runs = Counter(line.split()[0] for line in record.read_text().splitlines())
    assert runs == dict.fromkeys(innocent, 1), "an innocent task ran twice or never"
    assert bad.status.value == "dead"
    assert bad.error == "OSError: cannot read /data/caf\\udce9.txt"
    assert [a.outcome for a in attempts] == ["failed"]
    assert attempts[0].traceback is not None and "caf\\udce9" in attempts[0].traceback
    assert worker.terminate(timeout=15) == 0, worker.output()


def test_cli_submit_prints_the_warning(tmp_path: Path, procs: list[Proc]) -> None:
    dev, url = start_dev(tmp_path, "--demo")
    procs.append(dev)
    deadline = time.monotonic() + 10
    while not httpx.get(f"{url}/v1/workers").json():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    served = cli("submit", "demo.add", "-d", '{"a": 1, "b": 2}', "--url", url)
    assert served.returncode == 0 and served.stderr == ""
    typo = cli("submit", "demo.ad", "--url", url)
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr.startswith(
        "warning: no live worker of queue 'default' has a handler named 'demo.ad'"
    )
    assert " demo.ad " in typo.stdout
    assert dev.terminate() == 0
