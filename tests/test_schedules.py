"""Recurring schedules end to end, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from chronoq import App
from chronoq.models import ScheduleCreate
from chronoq.scheduler import Scheduler
from tests.conftest import Harness


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def every_second(name: str = "tick", **extra: Any) -> dict[str, Any]:
    return {"name": name, "cron": "* * * * * *", "task": {"name": "noop"}, **extra}


async def runs_of(harness: Harness, key: str) -> list[dict[str, Any]]:
    page = (await harness.http.get(f"/v1/schedules/{key}/runs", params={"limit": 500})).json()
    items: list[dict[str, Any]] = page["items"]
    return items


async def test_create_validates_cron_timezone_and_rule(harness: Harness) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"cron": "61 * * * *"}, "cron", "out of range"),
        ({"cron": "*/5 * * * *", "timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({"cron": "* * * * *", "interval_seconds": 5}, "body", "exactly one"),
        ({}, "body", "exactly one"),
        ({"interval_seconds": 0.5}, "interval_seconds", "greater than or equal to 1"),
        ({"cron": "@hourly", "misfire_policy": "sometimes"}, "misfire_policy", "skip"),
        (
            {
                "cron": "@hourly",
                "start_at": "2030-01-02T00:00:00Z",
                "end_at": "2030-01-01T00:00:00Z",
            },
            "body",
            "end_at must be after start_at",
        ),
    ]
    for extra, field, fragment in cases:
        body: dict[str, Any] = {"name": "s", "task": {"name": "noop"}, **extra}
        response = await harness.http.post("/v1/schedules", json=body)
        assert response.status_code == 422, (extra, response.text)
        error = response.json()["error"]
        assert field in {d["field"] for d in error["details"]}, error
        assert fragment in error["message"], error
    assert (await harness.http.get("/v1/schedules")).json()["items"] == []


NEVER_FIRES = ["0 0 30 2 *", "0 0 31 4 *", "0 0 1 1 1#5"]


async def test_a_cron_that_never_fires_is_a_422_on_create_and_patch(harness: Harness) -> None:
    ok = await harness.http.post(
        "/v1/schedules", json={"name": "ok", "cron": "@daily", "task": {"name": "noop"}}
    )
    assert ok.status_code == 201, ok.text
    for cron in NEVER_FIRES:
        for method, path in (("POST", "/v1/schedules"), ("PATCH", "/v1/schedules/ok")):
            body = (
                {"cron": cron}
                if method == "PATCH"
                else {"name": "never", "cron": cron, "task": {"name": "noop"}}
            )
            response = await harness.http.request(method, path, json=body)
            assert response.status_code == 422, (method, cron, response.text)
            error = response.json()["error"]
            assert error["code"] == "validation_error"
            assert [d["field"] for d in error["details"]] == ["cron"], error
            assert "never fires" in error["message"], error
    names = [s["name"] for s in (await harness.http.get("/v1/schedules")).json()["items"]]
    assert names == ["ok"]
    assert (await harness.http.get("/v1/schedules/ok")).json()["cron"] == "@daily"


def test_periodic_with_a_cron_that_never_fires_is_refused_when_declared() -> None:
    app = App()
    with pytest.raises(ValidationError, match="never fires"):

        @app.periodic(cron="0 0 30 2 *")
        def never() -> None:
            return None


async def test_crud_pause_resume_trigger(harness: Harness) -> None:
    created = await harness.http.post(
        "/v1/schedules",
        json={
            "name": "report",
            "cron": "0 9 * * MON-FRI",
            "timezone": "Europe/Paris",
            "task": {"name": "noop", "payload": {"kind": "daily"}, "queue": "reports"},
        },
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert len(schedule["next_fire_times"]) == 5
    assert schedule["next_fire_at"] == schedule["next_fire_times"][0]
    first = datetime.fromisoformat(schedule["next_fire_at"]).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris")
    )
    assert (first.hour, first.minute) == (9, 0) and first.weekday() < 5

    dup = await harness.http.post(
        "/v1/schedules", json={"name": "report", "cron": "@daily", "task": {"name": "noop"}}
    )
    assert dup.status_code == 409

    by_name = (await harness.http.get("/v1/schedules/report")).json()
    assert by_name["id"] == schedule["id"]
    patched = (await harness.http.patch("/v1/schedules/report", json={"cron": "@hourly"})).json()
    assert patched["cron"] == "@hourly"
    assert ts(patched["next_fire_at"]) - time.time() <= 3600
    assert patched["task"]["payload"] == {"kind": "daily"}
    bad = await harness.http.patch("/v1/schedules/report", json={"timezone": "Nowhere/Land"})
    assert bad.status_code == 422

    paused = (await harness.http.post("/v1/schedules/report/pause")).json()
    assert paused["paused"] is True and paused["next_fire_at"] is None
    resumed = (await harness.http.post(f"/v1/schedules/{schedule['id']}/resume")).json()
    assert resumed["paused"] is False and resumed["next_fire_at"] is not None

    triggered = await harness.http.post("/v1/schedules/report/trigger")
    assert triggered.status_code == 201
    run = triggered.json()
    assert run["schedule_id"] == schedule["id"] and run["queue"] == "reports"
    assert [r["id"] for r in await runs_of(harness, "report")] == [run["id"]]

    assert (await harness.http.delete("/v1/schedules/report")).status_code == 204
    assert (await harness.http.get("/v1/schedules/report")).status_code == 404
    assert (await harness.get(run["id"]))["schedule_id"] == schedule["id"]


async def test_fires_every_second_on_time(app: App, harness: Harness) -> None:
    @app.task("noop")
    def noop() -> None:
        return None

    harness.start_scheduler()
    harness.start_worker()
    await harness.http.post("/v1/schedules", json=every_second())
    await asyncio.sleep(3.6)
    runs = await runs_of(harness, "tick")
    assert 3 <= len(runs) <= 4, runs
    slots = sorted(ts(r["slot"]) for r in runs)
    assert all(b - a == 1.0 for a, b in itertools.pairwise(slots)), slots
    for r in runs:
        task = await harness.wait_for(r["id"], "succeeded")
        lag = ts(task["attempt_history"][0]["started_at"]) - ts(task["slot"])
        assert 0 <= lag < 1.0, lag


async def test_two_schedulers_never_fire_a_slot_twice(harness: Harness) -> None:
    await harness.http.post("/v1/schedules", json=every_second())
    await harness.http.post(
        "/v1/schedules", json={"name": "fast", "interval_seconds": 1, "task": {"name": "noop"}}
    )
    schedulers = [Scheduler(harness.store, poll_seconds=0.05) for _ in range(3)]
    jobs = [asyncio.create_task(s.run()) for s in schedulers]
    await asyncio.sleep(3.2)
    for s in schedulers:
        s.stop()
    await asyncio.gather(*jobs)
    for name in ("tick", "fast"):
        slots = [r["slot"] for r in await runs_of(harness, name)]
        assert len(slots) >= 3
        assert len(slots) == len(set(slots)), f"{name} fired a slot twice"


async def test_a_non_binary_interval_fires_each_slot_once(harness: Harness) -> None:
    """1.1 s is no binary fraction: slots computed by float division once came back equal
    to the slot just fired, so the scheduler walked one slot 100,000 times a round."""
    anchor = float(int(time.time()) - 100)  # whole seconds: a start the old maths tripped on
    created = await harness.http.post(
        "/v1/schedules",
        json={
            "name": "odd",
            "interval_seconds": 1.1,
            "task": {"name": "noop"},
            "start_at": datetime.fromtimestamp(anchor, UTC).isoformat(),
            "misfire_policy": "catch_up",
            "max_catch_up": 1000,
            "misfire_grace_seconds": 1000,
        },
    )
    assert created.status_code == 201, created.text
    schedulers = [Scheduler(harness.store, poll_seconds=0.05) for _ in range(2)]
    jobs = [asyncio.create_task(s.run()) for s in schedulers]
    started = time.time()
    deadline = time.monotonic() + 15
    while len(await runs_of(harness, "odd")) < 4 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for s in schedulers:
        s.stop()
    await asyncio.gather(*jobs)
    ended = time.time()
    steps = sorted(round((ts(r["slot"]) - anchor) / 1.1) for r in await runs_of(harness, "odd"))
    assert len(steps) >= 4, steps
    assert steps == list(range(steps[0], steps[-1] + 1)), f"a slot fired twice or not: {steps}"
    assert anchor + steps[0] * 1.1 <= started + 1.1 and anchor + steps[-1] * 1.1 <= ended
    assert sum(s.fired for s in schedulers) == len(steps)


async def _downtime(harness: Harness, policy: str) -> list[float]:
    """A schedule whose scheduler was down for 10 s, then one firing round at x.5 s."""
    now = int(time.time()) + 0.5
    body = every_second(policy, misfire_policy=policy, max_catch_up=3, misfire_grace_seconds=2.5)
    schedule = (await harness.http.post("/v1/schedules", json=body)).json()
    down_since = float(int(now) - 10)
    async with harness.store.conn() as c:
        await c.execute(
            "UPDATE schedules SET next_fire_at = $1 WHERE id = $2", down_since, schedule["id"]
        )
    await harness.store.schedules.fire_due(now)
    return sorted(ts(r["slot"]) - down_since for r in await runs_of(harness, policy))


async def test_misfire_policies_after_downtime(harness: Harness) -> None:
    # slots at 0..10 s after the outage began, fired at 10.5 s with a 2.5 s grace
    assert await _downtime(harness, "skip") == [8, 9, 10]  # only slots within the grace
    assert await _downtime(harness, "run_once") == [7, 8, 9, 10]  # plus the latest missed
    assert await _downtime(harness, "catch_up") == [5, 6, 7, 8, 9, 10]  # max_catch_up = 3


async def test_paused_schedule_fires_nothing_and_end_at_stops(harness: Harness) -> None:
    harness.start_scheduler()
    await harness.http.post("/v1/schedules", json=every_second("paused", paused=True))
    end = datetime.now(UTC) + timedelta(seconds=1.5)
    await harness.http.post("/v1/schedules", json=every_second("ending", end_at=end.isoformat()))
    await asyncio.sleep(2.7)
    assert await runs_of(harness, "paused") == []
    ending = await runs_of(harness, "ending")
    assert 1 <= len(ending) <= 2
    assert all(ts(r["slot"]) <= end.timestamp() for r in ending)
    assert (await harness.http.get("/v1/schedules/ending")).json()["next_fire_at"] is None


async def test_periodic_declared_in_code_is_created_once_and_updated(db_url: str) -> None:
    from tests.conftest import make_settings

    def build(cron: str) -> App:
        app = App(settings=make_settings(db_url))

        @app.periodic(cron=cron, timezone="Europe/Paris", queue="maintenance")
        def cleanup() -> None:
            return None

        return app

    for cron in ("*/5 * * * *", "*/5 * * * *", "0 3 * * *"):
        app = build(cron)
        async with app:
            page = await app.store.schedules.page()
    assert len(page) == 1
    [schedule] = page
    assert schedule.cron == "0 3 * * *" and schedule.timezone == "Europe/Paris"
    assert schedule.task is not None and schedule.task.queue == "maintenance"
    assert schedule.name.endswith("cleanup")


async def test_upsert_keeps_an_operator_pause(app: App, harness: Harness) -> None:
    spec = ScheduleCreate.model_validate(every_second("op"))
    await harness.store.schedules.upsert(spec, time.time())
    await harness.http.post("/v1/schedules/op/pause")
    _, changed = await harness.store.schedules.upsert(spec, time.time())
    assert not changed
    assert (await harness.store.schedules.get("op")).paused
