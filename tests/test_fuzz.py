"""Property tests: whatever JSON a client sends, the API answers 2xx or 4xx — never 5xx —
and an accepted task reads back exactly as sent."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronoq import App
from chronoq.api import create_api
from tests.conftest import make_settings

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {"name": st.text(max_size=12)},
    optional={
        "payload": json_values,
        "queue": st.text(max_size=12),
        "priority": st.integers(-2000, 2000) | st.text(max_size=3),
        "delay_seconds": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        "run_at": st.datetimes().map(lambda d: d.isoformat() + "Z") | st.text(max_size=10),
        "max_attempts": st.integers(-5, 200),
        "timeout_seconds": st.floats(allow_nan=False, allow_infinity=False),
        "idempotency_key": st.text(max_size=10),
        "backoff": st.dictionaries(
            st.sampled_from(["base", "factor", "max", "jitter", "x"]),
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        ),
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
async def test_submit_never_5xx_and_round_trips(tmp_path: Path, body: dict[str, Any]) -> None:
    app = App(settings=make_settings(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"))
    async with app:
        transport = httpx.ASGITransport(app=create_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.post("/v1/tasks", json=body)
            assert response.status_code < 500, response.text
            if response.status_code in (200, 201):
                task = (await http.get(f"/v1/tasks/{response.json()['id']}")).json()
                assert task["payload"] == body.get("payload", {})
                assert task["name"] == body["name"]
            else:
                assert response.json()["error"]["message"]
