"""The REST API's contract: validation messages, pagination, queues, health, OpenAPI."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest

from chronoq import App
from tests.conftest import Harness, make_settings, running
from tests.processes import free_port


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"name": "x", "run_at": "tomorrow at noon"}, "run_at", "datetime"),
        ({"name": "x", "run_at": "2030-01-01T09:00:00"}, "run_at", "timezone"),
        ({"name": "x", "delay_seconds": -5}, "delay_seconds", "greater than or equal to 0"),
        ({"name": "x", "payload": [1, 2]}, "payload", "dictionary"),
        ({"name": "x", "payload": "text"}, "payload", "dictionary"),
        ({"name": ""}, "name", "at least 1"),
        ({"name": "has spaces"}, "name", "pattern"),
        ({"payload": {}}, "name", "required"),
        ({"name": "x", "max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"name": "x", "priority": "high"}, "priority", "integer"),
        ({"name": "x", "timeout_seconds": 0}, "timeout_seconds", "greater than 0"),
        ({"name": "x", "backoff": {"factor": 0.5}}, "backoff.factor", "greater than or equal"),
        ({"name": "x", "colour": "red"}, "colour", "not permitted"),
        ({"name": "x", "idempotency_key": "a\x00b"}, "idempotency_key", "pattern"),
        ({"name": "x", "run_at": "2030-01-01T09:00:00Z", "delay_seconds": 1}, "body", "not both"),
    ],
)
async def test_bad_submissions_name_the_field(
    harness: Harness, body: dict[str, Any], field: str, fragment: str
) -> None:
    response = await harness.http.post("/v1/tasks", json=body)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "validation_error"
    fields = {d["field"] for d in error["details"]}
    assert field in fields, error
    assert fragment.lower() in error["message"].lower(), error
    assert (await harness.http.get("/v1/tasks")).json()["items"] == []


async def test_malformed_json_is_a_422(harness: Harness) -> None:
    response = await harness.http.post(
        "/v1/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in error_of(response)["message"]


async def test_payload_over_the_limit_is_413(app: App, harness: Harness) -> None:
    limit = app.settings.max_payload_bytes
    response = await harness.http.post(
        "/v1/tasks", json={"name": "x", "payload": {"blob": "a" * limit}}
    )
    assert response.status_code == 413
    error = error_of(response)
    assert error["details"][0]["field"] == "payload"
    assert str(limit) in error["message"]
    ok = await harness.http.post(
        "/v1/tasks", json={"name": "x", "payload": {"blob": "a" * (limit - 100)}}
    )
    assert ok.status_code == 201


async def test_unknown_and_malformed_ids(harness: Harness) -> None:
    unknown = "01890a5d-ac96-774b-bcce-b302099a8057"
    for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/retry")]:
        response = await harness.http.request(method, f"/v1/tasks/{unknown}{path}")
        assert response.status_code == 404
        assert unknown in error_of(response)["message"]
        bad = await harness.http.request(method, f"/v1/tasks/not-an-id{path}")
        assert bad.status_code == 422
        assert "not a task id" in error_of(bad)["message"]
    assert (await harness.http.get("/v1/tasks", params={"cursor": "zzz"})).status_code == 422
    assert (await harness.http.get("/v1/tasks", params={"status": "nope"})).status_code == 422
    assert (await harness.http.get("/v1/tasks", params={"limit": 0})).status_code == 422
    assert (await harness.http.get("/v1/nothing")).status_code == 404


async def test_retry_of_a_task_that_is_not_failed_is_409(harness: Harness) -> None:
    task = (await harness.http.post("/v1/tasks", json={"name": "x"})).json()
    response = await harness.http.post(f"/v1/tasks/{task['id']}/retry")
    assert response.status_code == 409
    assert error_of(response)["code"] == "invalid_transition"


async def test_cursor_pagination_and_filters(harness: Harness) -> None:
    ids = []
    for i in range(7):
        task = await harness.http.post(
            "/v1/tasks",
            json={"name": "even" if i % 2 == 0 else "odd", "queue": "a" if i < 4 else "b"},
        )
        ids.append(task.json()["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await harness.http.get("/v1/tasks", params=params)).json()
        seen += [t["id"] for t in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))
    even = (await harness.http.get("/v1/tasks", params={"name": "even"})).json()["items"]
    assert len(even) == 4
    both = (await harness.http.get("/v1/tasks", params={"name": "odd", "queue": "b"})).json()
    assert [t["id"] for t in both["items"]] == [ids[5]]
    queued = (await harness.http.get("/v1/tasks", params={"status": "queued"})).json()
    assert len(queued["items"]) == 7


async def test_queue_stats(harness: Harness) -> None:
    for queue in ("emails", "emails", "reports"):
        await harness.http.post("/v1/tasks", json={"name": "x", "queue": queue})
    await harness.http.post("/v1/tasks", json={"name": "x", "queue": "emails", "delay_seconds": 60})
    stats = {q["queue"]: q for q in (await harness.http.get("/v1/queues")).json()}
    assert stats["emails"]["depth"] == 2
    assert stats["emails"]["counts"]["scheduled"] == 1
    assert stats["reports"]["depth"] == 1
    assert stats["emails"]["oldest_queued_age_seconds"] >= 0


async def test_health_and_readiness(harness: Harness) -> None:
    assert (await harness.http.get("/healthz")).json() == {"status": "ok"}
    assert (await harness.http.get("/readyz")).json() == {"status": "ready"}


async def test_readiness_reports_a_closed_store(app: App, harness: Harness) -> None:
    store = app.store
    await store.close()
    try:
        response = await harness.http.get("/readyz")
        assert response.status_code == 503
        assert error_of(response)["code"] == "store_unavailable"
    finally:
        await store.open()


async def test_openapi_describes_every_route_and_error(harness: Harness) -> None:
    spec = (await harness.http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in [
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/cancel",
        "/v1/tasks/{task_id}/retry",
        "/v1/queues",
        "/healthz",
        "/readyz",
    ]:
        assert path in paths, path
    assert set(paths["/v1/tasks"]["post"]["responses"]) >= {"200", "201", "413", "422"}
    assert set(paths["/v1/tasks/{task_id}/cancel"]["post"]["responses"]) >= {"404", "409"}
    assert "ErrorResponse" in spec["components"]["schemas"]


async def test_payload_that_json_cannot_hold_is_a_422(harness: Harness) -> None:
    response = await harness.http.post(
        "/v1/tasks",
        content=b'{"name": "x", "payload": {"big": 123456789012345678901234567890}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert error_of(response)["details"][0]["field"] == "payload"


async def test_non_finite_numbers_are_a_422(harness: Harness) -> None:
    for raw in (
        b'{"name": "x", "payload": {"v": [1, Infinity]}}',
        b'{"name": "x", "payload": {"v": NaN}}',
        b'{"name": "x", "delay_seconds": Infinity}',
        b'{"name": "x", "priority": NaN}',
    ):
        response = await harness.http.post(
            "/v1/tasks", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (raw, response.text)


def test_ids_are_strictly_increasing_uuid7() -> None:
    import uuid

    from chronoq.ids import is_id, new_id

    ids = [new_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(is_id(i) for i in ids[:100])
    assert uuid.UUID(ids[0]).version == 7


async def test_discard_only_finished_tasks(harness: Harness) -> None:
    task = (await harness.http.post("/v1/tasks", json={"name": "x"})).json()
    busy = await harness.http.delete(f"/v1/tasks/{task['id']}")
    assert busy.status_code == 409 and "only finished tasks" in error_of(busy)["message"]
    await harness.http.post(f"/v1/tasks/{task['id']}/cancel")
    assert (await harness.http.delete(f"/v1/tasks/{task['id']}")).status_code == 204
    assert (await harness.http.get(f"/v1/tasks/{task['id']}")).status_code == 404
    async with harness.store.conn() as c:
        assert await c.fetch("SELECT * FROM attempts WHERE task_id = $1", task["id"]) == []
    assert (await harness.http.delete(f"/v1/tasks/{task['id']}")).status_code == 404


async def test_a_nul_in_any_parameter_of_any_route_is_a_422(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses NUL in text; it must never reach the store (once a 500 there)."""
    spec = (await harness.http.get("/openapi.json")).json()
    tried = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = [p for p in operation.get("parameters", []) if p["in"] in ("path", "query")]
            plain = {
                p["name"]: "01890a5d-ac96-774b-bcce-b302099a8057"
                for p in params
                if p["in"] == "path"
            }
            for param in params:
                values = {**plain, param["name"]: "a\x00b"}
                url = path.format(**{k: quote(v, safe="") for k, v in values.items() if k in plain})
                query = {param["name"]: "a\x00b"} if param["in"] == "query" else {}
                response = await harness.http.request(method.upper(), url, params=query)
                assert response.status_code == 422, (method, url, query, response.text)
                error = error_of(response)
                assert error["code"] == "validation_error"
                assert [d["field"] for d in error["details"]] == [param["name"]], error
                assert "NUL" in error["message"]
                tried += 1
    assert tried >= 15  # task ids, schedule keys, cursors, filters, limits
    for operations in spec["paths"].values():  # and the schema says so
        for operation in operations.values():
            for param in operation.get("parameters", []):
                for branch in [param["schema"], *param["schema"].get("anyOf", [])]:
                    if branch.get("type") == "string":
                        assert "pattern" in branch, param
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_method_not_allowed_names_the_allowed_methods(harness: Harness) -> None:
    for method, path, allow in [
        ("PUT", "/v1/tasks", "GET, POST, DELETE"),
        ("DELETE", "/v1/schedules", "GET, POST"),
        ("PUT", "/v1/schedules/nightly", "GET, PATCH, DELETE"),
        ("GET", "/v1/tasks/01890a5d-ac96-774b-bcce-b302099a8057/cancel", "POST"),
        ("POST", "/healthz", "GET"),
    ]:
        response = await harness.http.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allow, (method, path)
        error = error_of(response)
        assert error["code"] == "method_not_allowed" and allow in error["message"]


async def test_openapi_states_ids_and_rules_between_fields(harness: Harness) -> None:
    spec = (await harness.http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    task_id = spec["paths"]["/v1/tasks/{task_id}"]["get"]["parameters"][0]["schema"]
    cursor = {p["name"]: p for p in spec["paths"]["/v1/tasks"]["get"]["parameters"]}["cursor"]
    for declared in (
        task_id,
        cursor["schema"],
        schemas["Task"]["properties"]["id"],
        schemas["Schedule"]["properties"]["id"],
    ):
        assert declared["format"] == "uuid", declared
    one_rule = {tuple(branch["required"]) for branch in schemas["ScheduleCreate"]["oneOf"]}
    assert one_rule == {("cron",), ("interval_seconds",)}
    assert set(schemas["TaskCreate"]["not"]["required"]) == {"run_at", "delay_seconds"}
    assert set(schemas["ScheduleUpdate"]["not"]["required"]) == {"cron", "interval_seconds"}
    assert schemas["ScheduleUpdate"]["properties"]["timezone"]["type"] == "string"  # no null
    for model in ("TaskCreate", "TaskTemplate-Input"):  # requests; answers hold any JSON
        payload = schemas[model]["properties"]["payload"]["additionalProperties"]
        assert payload == {"$ref": "#/components/schemas/JsonValue"}, model
    assert schemas["Task"]["properties"]["payload"]["additionalProperties"] is True
    assert {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1} in schemas["JsonValue"][
        "anyOf"
    ]


async def test_patch_refuses_null_for_fields_a_schedule_keeps(harness: Harness) -> None:
    created = await harness.http.post(
        "/v1/schedules",
        json={
            "name": "s",
            "cron": "@daily",
            "task": {"name": "noop"},
            "end_at": "2040-01-01T00:00:00Z",
        },
    )
    assert created.status_code == 201, created.text
    for field in ("cron", "timezone", "task", "paused"):
        response = await harness.http.patch("/v1/schedules/s", json={field: None})
        assert response.status_code == 422, (field, response.text)
        assert [d["field"] for d in error_of(response)["details"]] == [field]
    late = await harness.http.patch("/v1/schedules/s", json={"start_at": "2041-01-01T00:00:00Z"})
    assert late.status_code == 409, late.text  # valid alone; the stored end_at is earlier
    assert error_of(late)["code"] == "conflicting_change"
    assert "end_at must be after start_at" in error_of(late)["message"]
    both = await harness.http.patch(
        "/v1/schedules/s",
        json={"start_at": "2041-01-01T00:00:00Z", "end_at": "2040-01-01T00:00:00Z"},
    )
    assert both.status_code == 422, both.text  # wrong in itself
    cleared = await harness.http.patch("/v1/schedules/s", json={"end_at": None})
    assert cleared.status_code == 200 and cleared.json()["end_at"] is None


async def test_readiness_includes_the_configured_redis_broker(db_url: str) -> None:
    down = App(settings=make_settings(db_url, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    async with running(down) as harness:
        response = await harness.http.get("/readyz")
        assert response.status_code == 503, response.text
        error = error_of(response)
        assert error["code"] == "broker_unavailable"
        assert error["message"].startswith("broker unavailable:"), error
    up = App(settings=make_settings(db_url, broker_url="redis://127.0.0.1:6379/0"))
    async with running(up) as harness:
        assert (await harness.http.get("/readyz")).json() == {"status": "ready"}


# -- POST /v1/recurrence/preview --------------------------------------------------------------
async def test_a_rule_preview_gives_fire_times_in_its_zone(harness: Harness) -> None:
    answer = await harness.http.post(
        "/v1/recurrence/preview",
        json={"cron": "30 9 * * 1-5", "timezone": "America/New_York", "count": 7},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["timezone"] == "America/New_York" and len(body["times"]) == 7
    for t in body["times"]:
        local = datetime.fromisoformat(t["local"])
        assert (local.hour, local.minute) == (9, 30) and local.weekday() < 5
        assert local == datetime.fromisoformat(t["at"].replace("Z", "+00:00"))
    every = await harness.http.post(
        "/v1/recurrence/preview",
        json={"interval_seconds": 3600, "start_at": "2031-01-01T00:00:00Z", "count": 2},
    )
    assert [t["at"] for t in every.json()["times"]] == [
        "2031-01-01T00:00:00Z",
        "2031-01-01T01:00:00Z",
    ]
    anchored = await harness.http.post(  # an interval from a past start: slots on its grid
        "/v1/recurrence/preview",
        json={"interval_seconds": 900, "start_at": "2020-01-01T00:00:00Z", "count": 3},
    )
    slots = [
        datetime.fromisoformat(t["at"].replace("Z", "+00:00")) for t in anchored.json()["times"]
    ]
    assert all(s.minute % 15 == 0 and s.second == 0 for s in slots)
    assert (
        slots[0].timestamp() > time.time() - 1
        and slots[1].timestamp() - slots[0].timestamp() == 900
    )
    ended = await harness.http.post(
        "/v1/recurrence/preview",
        json={"cron": "@yearly", "end_at": "2020-01-02T00:00:00Z"},
    )
    assert ended.json()["times"] == []


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"cron": "0 0 30 2 *"}, "cron", "never fires"),
        ({"cron": "61 * * * *"}, "cron", ""),
        ({"cron": "* * * * *", "interval_seconds": 60}, "body", "exactly one"),
        ({}, "body", "exactly one"),
        ({"cron": "* * * * *", "timezone": "Mars/Base"}, "timezone", "unknown time zone"),
        ({"interval_seconds": 0.5}, "interval_seconds", "greater than or equal to 1"),
        ({"cron": "@daily", "count": 1000}, "count", "less than or equal to 100"),
        ({"cron": "@daily", "start_at": "2030-01-01T00:00:00"}, "start_at", "timezone"),
        (
            {"interval_seconds": 31622400, "start_at": "9990-01-01T00:00:00Z", "count": 100},
            "start_at",
            "out of range",
        ),
        ({"cron": "@yearly", "start_at": "9950-01-01T00:00:00Z", "count": 100}, "start_at", "year"),
    ],
)
async def test_a_bad_rule_preview_is_a_422_naming_the_field(
    harness: Harness, body: dict[str, Any], field: str, fragment: str
) -> None:
    answer = await harness.http.post("/v1/recurrence/preview", json=body)
    assert answer.status_code == 422, answer.text
    error = error_of(answer)
    assert field in {d["field"] for d in error["details"]}, error
    assert fragment in error["message"], error
