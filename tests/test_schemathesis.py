"""Schemathesis fuzzes every operation of the live OpenAPI schema (``/openapi.json``) through
the ASGI app, on a fresh SQLite database per operation, and checks each answer: never a
5xx, only documented status codes, bodies that match the declared models.

(The ``/v1/events`` WebSocket is not in the OpenAPI schema, nor are ``/metrics`` and the
``/ui`` pages, so schemathesis does not call them.)

A body FastAPI cannot decode (not UTF-8, nested too deeply) is a documented 422, like any
other unparseable JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python.asgi import shutdown_lifespans  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from chronoq import App  # noqa: E402
from chronoq.api import create_api  # noqa: E402
from chronoq.api.limits import install_limits  # noqa: E402
from tests.conftest import make_settings  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


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
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
