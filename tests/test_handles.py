"""Handles: ``delay()`` returns a typed TaskHandle whose result is awaited without polling.

Every async wait below passes ``recheck_seconds=NEVER`` and no timeout of its own, so the handle
never re-reads the task unprompted: a result can only arrive because the change was
published on the event bus. Without that wake-up these waits would hang, and the test's
timeout (``within``) fails them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from mypy import api as mypy_api
from pydantic import ValidationError

import chronoq
from chronoq import App, NotFound, ResultTimeout, Status, TaskCancelled, TaskDead
from chronoq.events import TaskEvent
from tests.conftest import Harness, make_settings

NEVER = 3600.0


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


T = TypeVar("T")
TYPING = Path(__file__).parent / "typing"


async def test_result_of_a_succeeded_task_arrives_by_event(app: App, harness: Harness) -> None:
    @app.task("add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    handle = await add.adelay(a=2, b=3)
    assert handle.id == handle.task.id and handle.task.status is Status.QUEUED
    waiter = asyncio.create_task(within(handle.aresult(recheck_seconds=NEVER)))
    await asyncio.sleep(0.1)  # the waiter has read "queued" and sleeps on the bus
    assert not waiter.done()
    harness.start_worker()  # only now can the task run: the waiter must be woken
    assert await waiter == 5
    assert await handle.astatus() is Status.SUCCEEDED
    assert await handle.aresult(timeout=0) == 5  # a finished task answers at once


async def test_async_handler_result_and_options(app: App, harness: Harness) -> None:
    @app.task("echo", priority=1)
    async def echo(text: str) -> dict[str, str]:
        return {"text": text}

    harness.start_worker()
    handle = await echo.options(priority=7, idempotency_key="k1").adelay(text="hi")
    assert handle.task.priority == 7 and handle.task.idempotency_key == "k1"
    assert await within(handle.aresult(recheck_seconds=NEVER)) == {"text": "hi"}
    assert echo.defaults["priority"] == 1  # options() configured a copy
    with pytest.raises(ValidationError):
        echo.options(priority=5000)
    with pytest.raises(TypeError, match="by keyword"):
        await echo.adelay("positional")


async def test_dead_task_raises_with_attempt_history_then_retry(app: App, harness: Harness) -> None:
    fixed = False

    @app.task("flaky", max_attempts=2, backoff={"base": 0, "jitter": 0})
    def flaky() -> str:
        if not fixed:
            raise ValueError("boom")
        return "ok"

    harness.start_scheduler()
    harness.start_worker()
    handle = await flaky.adelay()
    with pytest.raises(TaskDead) as caught:
        await within(handle.aresult(recheck_seconds=NEVER))
    dead = caught.value
    assert dead.task.status is Status.DEAD and "boom" in (dead.error or "")
    assert [(a.attempt, a.outcome) for a in dead.attempts] == [(1, "failed"), (2, "failed")]
    assert all("boom" in (a.error or "") for a in dead.attempts)
    fixed = True
    assert (await handle.aretry()).status is Status.QUEUED
    assert await within(handle.aresult(recheck_seconds=NEVER)) == "ok"


async def test_cancelled_task_raises_and_timeout_raises(app: App, harness: Harness) -> None:
    @app.task("later")
    def later() -> None: ...

    handle = await later.aschedule(at=NEVER)
    with pytest.raises(ResultTimeout) as timed_out:
        await handle.aresult(timeout=0.2, recheck_seconds=NEVER)
    assert isinstance(timed_out.value, TimeoutError)
    assert timed_out.value.task.status is Status.SCHEDULED
    waiter = asyncio.create_task(within(handle.aresult(recheck_seconds=NEVER)))
    await asyncio.sleep(0.1)
    assert (await handle.acancel()).status is Status.CANCELLED
    with pytest.raises(TaskCancelled):
        await waiter


async def test_sync_result_from_a_thread(app: App, harness: Harness) -> None:
    @app.task("double")
    def double(x: int) -> int:
        return 2 * x

    harness.start_worker()

    def from_sync_code() -> tuple[int, Status]:
        handle = double.delay(x=21)
        return handle.result(timeout=10), handle.status()

    assert await asyncio.to_thread(from_sync_code) == (42, Status.SUCCEEDED)


async def test_app_get_cancel_retry_return_public_tasks(app: App, harness: Harness) -> None:
    @app.task("idle")
    def idle() -> None: ...

    handle = await idle.aschedule(NEVER)
    task = await app.aget(handle.id)
    assert isinstance(task, chronoq.Task) and task.attempt_history == []
    assert (await app.acancel(handle.id)).status is Status.CANCELLED
    assert (await asyncio.to_thread(app.get, handle.id)).status is Status.CANCELLED
    with pytest.raises(NotFound):
        await app.aget("00000000-0000-0000-0000-000000000000")


def test_mypy_checks_submissions_like_calls() -> None:
    """tests/typing/handles_ok.py type-checks; every line marked ``# E:`` in
    handles_bad.py is reported, and nothing else."""
    out, err, _ = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--hide-error-context",
            str(TYPING / "handles_ok.py"),
            str(TYPING / "handles_bad.py"),
        ]
    )
    reported = {
        int(m.group(2))
        for m in re.finditer(r"(handles_\w+)\.py:(\d+): error", out)
        if m.group(1) == "handles_bad"
    }
    assert "handles_ok.py" not in out, out + err
    bad = (TYPING / "handles_bad.py").read_text().splitlines()
    assert reported == {n for n, line in enumerate(bad, 1) if "# E:" in line}, out + err


async def test_result_finished_by_another_process_is_found_by_the_recheck(
    app: App, harness: Harness
) -> None:
    """A second App on the same database stands for another process: the completion is
    published on the worker's bus only, so the waiter finds it by its periodic re-read."""

    @app.task("square")
    def square(x: int) -> int:
        return x * x

    client = App(settings=app.settings)
    remote_square = client.task("square")(square.fn)
    async with client:
        handle = await remote_square.adelay(x=9)
        harness.start_worker()
        with pytest.raises(TimeoutError):  # no event reaches this bus: only a re-read can
            await within(handle.aresult(recheck_seconds=NEVER), 1.0)
        assert await within(handle.aresult(recheck_seconds=0.1)) == 81


async def test_waiter_rereads_when_its_subscription_dropped_events(
    app: App, harness: Harness
) -> None:
    """An event about the task may be among those a full subscription queue dropped: the
    waiter then re-reads at once rather than sleeping until its recheck."""

    @app.task("cube")
    def cube(x: int) -> int:
        return x**3

    client = App(settings=app.settings)
    remote_cube = client.task("cube")(cube.fn)
    async with client:
        handle = await remote_cube.adelay(x=2)
        waiter = asyncio.create_task(within(handle.aresult(recheck_seconds=NEVER)))
        harness.start_worker()  # completes it on the other App's bus: none reaches `client`
        await harness.wait_for(handle.id, "succeeded")
        assert not waiter.done()
        noise = TaskEvent("elsewhere", "noise", "default", "queued", 0, time.time())
        for _ in range(1001):  # fills the waiter's queue (1,000 batches), drops the last
            client.store.events.publish([noise])
        assert await waiter == 8


async def test_settings_given_before_opening_build_the_event_bus(tmp_path: Path) -> None:
    """``chronoq --app`` imports the App, then gives it the command line's settings: the App
    builds its store and event bus from those when it opens, once, and refuses a change
    while open; closed again, it may be given others for its next opening."""
    app = App(settings=make_settings(f"sqlite:///{tmp_path / 'first.db'}"))
    wanted = make_settings(f"sqlite:///{tmp_path / 'cli.db'}", redis_url="redis://127.0.0.1:6379/5")
    app.settings = wanted  # what the CLI does after importing the module
    async with app:
        bus = app.events
        assert bus.redis_url == wanted.redis_url and app.store.events is bus
        assert (tmp_path / "cli.db").exists() and not (tmp_path / "first.db").exists()
        with pytest.raises(RuntimeError, match="final while it is open"):
            app.settings = make_settings(f"sqlite:///{tmp_path / 'late.db'}")
        assert app.settings is wanted and app.events is bus
    app.settings = make_settings(f"sqlite:///{tmp_path / 'again.db'}")
    async with app:
        assert app.events is not bus and app.events.redis_url is None
        assert (tmp_path / "again.db").exists()
