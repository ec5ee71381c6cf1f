"""Hostile input at the API: oversized and streamed bodies, schedules that fire too often,
bodies that are not JSON. (SSRF and shell tests live in test_executors.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from chronoq import App
from chronoq.api import create_api
from chronoq.api.errors import ApiError
from chronoq.api.limits import check_schedule_rate, fires_per_minute, install_limits
from chronoq.config import Settings
from chronoq.models import ScheduleCreate, ScheduleUpdate
from chronoq.recurrence import Recurrence
from tests.conftest import make_settings


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[tuple[App, httpx.AsyncClient]]:
    """The API with its limits installed, small ones: 4 KiB payloads, 16 KiB requests,
    10 fires a minute."""
    app = App(
        settings=make_settings(
            f"sqlite:///{tmp_path / 'limits.db'}",
            max_payload_bytes=4096,
            max_request_bytes=16 * 1024,
            max_fires_per_minute=10,
        )
    )
    async with app:
        api = create_api(app)
        install_limits(api, app.settings)
        install_limits(api, app.settings)  # idempotent (once wired into create_api too)
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield app, http


def test_request_limit_defaults_to_twice_the_payload_limit_plus_64k() -> None:
    assert Settings().request_limit() == 2 * 256 * 1024 + 64 * 1024
    assert Settings(max_payload_bytes=1000).request_limit() == 2000 + 65536
    assert Settings(max_request_bytes=5000).request_limit() == 5000


async def test_body_over_the_request_limit_is_413_before_parsing(
    limited: tuple[App, httpx.AsyncClient],
) -> None:
    _, http = limited
    # not even JSON: the size alone decides, nothing parses it
    response = await http.post(
        "/v1/tasks", content=b"{" * (16 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    error = error_of(response)
    assert error["code"] == "payload_too_large"
    assert "16385 bytes" in error["message"] and "16384" in error["message"]
    assert error["details"][0]["field"] == "body"
    # a body under the request limit with a payload over the payload limit: the route's 413
    response = await http.post("/v1/tasks", json={"name": "x", "payload": {"b": "a" * 5000}})
    assert response.status_code == 413
    assert error_of(response)["details"][0]["field"] == "payload"
    assert (await http.post("/v1/tasks", json={"name": "x"})).status_code == 201


async def test_chunked_body_is_cut_off_at_the_limit(limited: tuple[App, httpx.AsyncClient]) -> None:
    _, http = limited
    sent = 0

    async def endless() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal sent
        yield b'{"name": "x", "payload": {"blob": "'
        for _ in range(1000):
            sent += 1024
            yield b"a" * 1024
        yield b'"}}'

    response = await http.post(
        "/v1/tasks", content=endless(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert "larger than 16384 bytes" in error_of(response)["message"]
    assert sent < 1000 * 1024  # it stopped reading
    tasks = (await http.get("/v1/tasks")).json()["items"]
    assert tasks == []

    async def small() -> AsyncIterator[bytes]:
        yield b'{"name": "x",'
        yield b' "payload": {"n": 1}}'

    ok = await http.post("/v1/tasks", content=small(), headers={"content-type": "application/json"})
    assert ok.status_code == 201, ok.text


async def test_bodies_are_json_only(limited: tuple[App, httpx.AsyncClient]) -> None:
    _, http = limited
    for content_type in [
        "application/x-www-form-urlencoded",
        "application/python-pickle",
        "text/plain",
    ]:
        response = await http.post(
            "/v1/tasks", content=b'{"name": "x"}', headers={"content-type": content_type}
        )
        assert response.status_code == 422, (content_type, response.text)
    deep = b'{"name": "x", "payload": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    response = await http.post(
        "/v1/tasks", content=deep, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert (await http.get("/v1/tasks")).json()["items"] == []


# -- schedule rate --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "rate"),
    [
        ("* * * * * *", 60),
        ("*/10 * * * * *", 6),
        ("0-29 * * * * *", 30),
        ("*/10 * 3 * * *", 6),  # only during 03:00, but then 6 a minute
        ("* * * * *", 1),
        ("0 2 * * *", 1),
        ("@hourly", 1),
    ],
)
def test_fires_per_minute_counts_the_busiest_minute(cron: str, rate: int) -> None:
    for zone in ["UTC", "Europe/Paris", "Australia/Lord_Howe"]:
        assert fires_per_minute(Recurrence(cron=cron, timezone=zone), now=1_800_000_000) == rate


def _schedule(**rule: Any) -> ScheduleCreate:
    return ScheduleCreate.model_validate({"name": "s", "task": {"name": "x"}, **rule})


def test_schedule_rate_limit() -> None:
    default = Settings()
    rules: list[dict[str, Any]] = [
        {"cron": "* * * * * *"},
        {"cron": "*/10 * * * * *"},
        {"interval_seconds": 1},
    ]
    for rule in rules:
        check_schedule_rate(_schedule(**rule), default)  # every second is fine at 60/min
    strict = Settings(max_fires_per_minute=10)
    check_schedule_rate(_schedule(cron="*/10 * * * * *"), strict)
    check_schedule_rate(_schedule(interval_seconds=6), strict)
    with pytest.raises(ApiError) as cron_error:
        check_schedule_rate(_schedule(cron="*/2 * * * * *"), strict)
    assert cron_error.value.status == 422
    assert cron_error.value.field == "cron"
    assert "fires 30 times a minute; the limit is 10" in cron_error.value.message
    with pytest.raises(ApiError) as interval_error:
        check_schedule_rate(_schedule(interval_seconds=5), strict)
    assert interval_error.value.field == "interval_seconds"
    assert "the limit is 10" in interval_error.value.message
    assert "at least 6 seconds" in interval_error.value.message
    with pytest.raises(ApiError):
        check_schedule_rate(ScheduleUpdate(cron="* * * * * *"), strict)
    check_schedule_rate(ScheduleUpdate(paused=True), strict)  # no new rule: nothing to check
    with pytest.raises(ValidationError, match="never fires"):  # refused before any rate
        _schedule(cron="0 0 30 2 *")


async def test_schedule_api_refuses_rules_that_fire_too_often(
    limited: tuple[App, httpx.AsyncClient],
) -> None:
    _, http = limited
    response = await http.post(
        "/v1/schedules", json={"name": "hammer", "cron": "* * * * * *", "task": {"name": "x"}}
    )
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["details"] == [{"field": "cron", "message": error["message"]}]
    assert "the limit is 10" in error["message"]
    ok = await http.post(
        "/v1/schedules", json={"name": "calm", "cron": "*/10 * * * * *", "task": {"name": "x"}}
    )
    assert ok.status_code == 201, ok.text
    patched = await http.patch("/v1/schedules/calm", json={"interval_seconds": 2})
    assert patched.status_code == 422, patched.text
    assert error_of(patched)["details"][0]["field"] == "interval_seconds"
    assert (await http.get("/v1/schedules/calm")).json()["cron"] == "*/10 * * * * *"
