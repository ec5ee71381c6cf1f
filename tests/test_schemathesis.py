"""Schemathesis fuzzes every operation of the live OpenAPI schema (``/openapi.json``) through
the ASGI app, on a fresh SQLite database per operation, and checks each answer: never a
5xx, only documented status codes, bodies that match the declared models.

(The ``/v1/events`` WebSocket is not in the OpenAPI schema, nor are ``/metrics`` and the
``/ui`` pages, so schemathesis does not call them.)

Positive data (requests the schema says are valid) must be accepted: no 422. The schema
declares ids as UUIDs and the rules between fields it can state (exactly one of `cron`
and `interval_seconds`, not both `run_at` and `delay_seconds`). What JSON Schema cannot
state is fixed up in generated bodies by :func:`within_what_json_schema_cannot_say`: a
cron rule's meaning (values in range, a date that exists), IANA zone names, `end_at`
after `start_at`, and a preview's fire times before the year 10,000; the server checks
those and its own tests cover them.

A body FastAPI cannot decode (not UTF-8, nested too deeply) is a documented 422, like any
other unparseable JSON.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from chronoq import App
from chronoq.api import create_api
from chronoq.api.errors import ApiError
from chronoq.api.history import plan
from chronoq.api.limits import install_limits
from chronoq.dag import WorkflowCreate
from chronoq.durations import parse_instant
from chronoq.recurrence import check_cron, check_timezone
from tests.conftest import make_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]


def _valid(check: Any, value: Any) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


def within_what_json_schema_cannot_say(body: Any) -> Any:
    """A generated schedule body with a working cron, a known zone and an end after its
    start (and a workflow whose graph holds), a bulk filter with times that parse (the
    schema gives their types, the server their meaning)."""
    if not isinstance(body, dict):
        return body
    chosen = body.get("filter")
    if isinstance(chosen, dict):  # a bulk action's times: ISO 8601 or a duration ago
        for key in ("created_before", "created_after", "updated_before", "updated_after"):
            if isinstance(chosen.get(key), str) and not _valid(
                lambda text: parse_instant(text, 0.0), chosen[key]
            ):
                del chosen[key]
    if isinstance(body.get("nodes"), list):
        a_graph(body)
    flow = body.get("workflow")  # a schedule that starts a workflow
    if isinstance(flow, dict) and isinstance(flow.get("nodes"), list):
        a_graph(flow)
    if isinstance(body.get("cron"), str) and not _valid(check_cron, body["cron"]):
        body["cron"] = "*/5 * * * *"
    if isinstance(body.get("timezone"), str) and not _valid(check_timezone, body["timezone"]):
        body["timezone"] = "UTC"
    start, end = body.get("start_at"), body.get("end_at")
    if isinstance(start, str) and isinstance(end, str) and _instant(end) <= _instant(start):
        del body["end_at"]
    if isinstance(body.get("count"), int) and isinstance(start, str) and not _fires_in_time(body):
        del body["start_at"]  # a preview whose times run past the year 9999: test_api's 422
    return body


def _fires_in_time(rule: dict[str, Any]) -> bool:
    """Whether a preview's ``count`` fire times from its ``start_at`` all fall before the
    year 10,000 (else the server's 422, tested in test_api.py, is the right answer)."""
    last = datetime(9999, 12, 30, tzinfo=UTC).timestamp()
    start = _instant(str(rule["start_at"]))
    interval = rule.get("interval_seconds")
    if isinstance(interval, int | float):
        return start + float(interval) * (int(rule["count"]) + 1) < last
    return start + 366 * 86400 * (int(rule["count"]) + 1) < last  # a cron fires at least yearly


def a_graph(body: dict[str, Any]) -> None:
    """A workflow body whose graph holds (:func:`chronoq.dag.check`): node ids unique,
    edges between known nodes in node order (no cycle), outputs known; generated edges
    that break a rule are left out."""
    nodes = [n for n in body["nodes"] if isinstance(n, dict) and isinstance(n.get("id"), str)]
    if len(nodes) != len(body["nodes"]):
        return  # against the schema: the server must refuse it, not this helper
    order: dict[str, int] = {}
    for node in nodes:
        order.setdefault(node["id"], len(order))
    body["nodes"] = [n for i, n in enumerate(nodes) if order[n["id"]] == i] or nodes[:1]
    if isinstance(body.get("outputs"), list):
        body["outputs"] = [o for o in body["outputs"] if not isinstance(o, str) or o in order]
    edges = body.get("edges")
    if not isinstance(edges, list):
        return
    kept: list[Any] = []
    for edge in edges:
        trial = {**body, "edges": [*kept, edge]}
        parent, child = (
            edge.get(k) if isinstance(edge, dict) else None for k in ("parent", "child")
        )
        if order.get(str(parent), -1) < order.get(str(child), -2) and _valid(
            WorkflowCreate.model_validate, trial
        ):
            kept.append(edge)
    body["edges"] = kept


def within_history_limits(query: dict[str, Any]) -> None:
    """GET /v1/history(/durations): a window, bucket and end the server accepts (durations
    it parses, at most 31 days in at most 1,440 buckets); the schema says only text."""
    if any(not isinstance(query.get(k, ""), str) for k in ("window", "bucket", "until")):
        return  # a case against the schema: the server must refuse it, not this helper
    for key in ("window", "bucket", "until"):
        try:
            plan(query.get("window", "1h"), query.get("bucket"), query.get("until"), time.time())
            return
        except ApiError:
            query.pop(key, None)


def _instant(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError):
        return float("nan")  # compares false: the server's own parser decides


@pytest.fixture
def api_schema(tmp_path: Path) -> Iterator[schemathesis.BaseSchema]:
    """The schema of an API on a temporary SQLite file. Schemathesis drives ASGI apps from
    its own event-loop thread, so the App is opened there, by the API's lifespan (started
    when the schema is loaded) rather than on this test's loop; closing the lifespan
    closes the App."""
    app = App(settings=make_settings(f"sqlite:///{tmp_path / 'fuzz.db'}"))
    api = create_api(app)
    install_limits(api, app.settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    assert app.is_open
    try:
        yield schema
    finally:
        shutdown_lifespans()
        assert not app.is_open


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_api_conforms_to_its_schema(case: schemathesis.Case[Any]) -> None:
    case.body = within_what_json_schema_cannot_say(case.body)
    query = case.query
    if (
        isinstance(query, dict)
        and isinstance(query.get("before"), str)
        and not _valid(lambda text: parse_instant(text, 0.0), query["before"])
    ):
        query["before"] = "7d"  # DELETE /v1/tasks: a time or a duration, the server parses
    if isinstance(query, dict) and case.path.startswith("/v1/history"):
        within_history_limits(query)
    case.call_and_validate(checks=CHECKS)
