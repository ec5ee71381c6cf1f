"""API keys: hashed storage, scopes, namespaces, and the WebSocket/CLI using them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

from chronoq import App
from tests.conftest import Harness, make_settings, running
from tests.processes import Proc, cli, free_port, wait_ready


@pytest.fixture
async def secured(db_url: str) -> AsyncIterator[Harness]:
    async with running(App(settings=make_settings(db_url, auth=True))) as harness:
        yield harness


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_keys_are_required_and_stored_hashed(secured: Harness) -> None:
    http = secured.http
    missing = await http.get("/v1/tasks")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    wrong = await http.get("/v1/tasks", headers=bearer("cq_nope_nope"))
    assert wrong.status_code == 401
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200

    key, secret = await secured.store.create_key("ci", ["write"])
    assert (await http.get("/v1/tasks", headers=bearer(secret))).status_code == 200
    async with secured.store.conn() as c:
        rows = await c.fetch("SELECT * FROM api_keys")
    assert secret not in json.dumps([dict(r) for r in rows], default=str)

    fresh, fresh_secret = await secured.store.create_key("temp", ["read"])
    assert await secured.store.revoke_key(fresh.id)
    assert (await http.get("/v1/tasks", headers=bearer(fresh_secret))).status_code == 401
    spec = (await http.get("/openapi.json")).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert key.allows("read") and not key.allows("admin")


async def test_scopes(secured: Harness) -> None:
    http = secured.http
    _, reader = await secured.store.create_key("reader", ["read"])
    _, writer = await secured.store.create_key("writer", ["write"])
    denied = await http.post("/v1/tasks", json={"name": "x"}, headers=bearer(reader))
    assert denied.status_code == 403 and "'write' scope" in denied.json()["error"]["message"]
    task = (await http.post("/v1/tasks", json={"name": "x"}, headers=bearer(writer))).json()
    assert (await http.get(f"/v1/tasks/{task['id']}", headers=bearer(reader))).status_code == 200
    assert (await http.post(f"/v1/tasks/{task['id']}/cancel",
                            headers=bearer(reader))).status_code == 403
    assert (await http.get("/v1/workers", headers=bearer(reader))).status_code == 200
    assert (await http.get("/metrics", headers=bearer(reader))).status_code == 200
    assert (await http.get("/metrics")).status_code == 401


async def test_namespaces_are_isolated(secured: Harness) -> None:
    http = secured.http
    _, alpha = await secured.store.create_key("alpha", ["write"], namespace="alpha")
    _, beta = await secured.store.create_key("beta", ["write"], namespace="beta")
    _, admin = await secured.store.create_key("ops", ["admin"])
    task = (await http.post("/v1/tasks", json={"name": "x", "queue": "q1"},
                            headers=bearer(alpha))).json()
    assert task["namespace"] == "alpha"
    for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/retry")]:
        response = await http.request(method, f"/v1/tasks/{task['id']}{path}",
                                      headers=bearer(beta))
        assert response.status_code == 404, (method, path)
    assert (await http.get("/v1/tasks", headers=bearer(beta))).json()["items"] == []
    assert (await http.get("/v1/queues", headers=bearer(beta))).json() == []
    assert [q["queue"] for q in (await http.get("/v1/queues",
                                                headers=bearer(alpha))).json()] == ["q1"]
    everything = (await http.get("/v1/tasks", headers=bearer(admin))).json()["items"]
    assert [t["id"] for t in everything] == [task["id"]]
    # the same idempotency key in another namespace is another task (tests/test_namespaces.py)
    for who, status in ((alpha, 201), (alpha, 200), (beta, 201)):
        response = await http.post("/v1/tasks", json={"name": "x", "idempotency_key": "k"},
                                   headers=bearer(who))
        assert response.status_code == status, response.text

    schedule = {"name": "nightly", "cron": "@daily", "task": {"name": "x"}}
    created = await http.post("/v1/schedules", json=schedule, headers=bearer(alpha))
    assert created.status_code == 201 and created.json()["namespace"] == "alpha"
    for method, path in [("GET", ""), ("POST", "/pause"), ("POST", "/trigger"),
                         ("DELETE", ""), ("GET", "/runs")]:
        response = await http.request(method, f"/v1/schedules/nightly{path}",
                                      headers=bearer(beta))
        assert response.status_code == 404, (method, path)
    assert (await http.get("/v1/schedules", headers=bearer(beta))).json()["items"] == []
    run = (await http.post("/v1/schedules/nightly/trigger", headers=bearer(alpha))).json()
    assert run["namespace"] == "alpha"


def test_dev_with_auth_cli_keys_and_websocket(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{tmp_path / 'auth.db'}"
    created = cli("keys", "create", "me", "--scope", "write", "--database-url", db)
    assert created.returncode == 0 and created.stdout.startswith("cq_")
    secret = created.stdout.strip()
    listed = cli("keys", "ls", "--database-url", db)
    assert "me" in listed.stdout and secret not in listed.stdout
    dev = Proc(["dev", "--demo", "--auth", "--port", str(port), "--database-url", db], {},
               tmp_path / "dev.log")
    try:
        wait_ready(url, dev)
        refused = cli("tasks", "ls", "--url", url)
        assert refused.returncode != 0 and "missing API key" in refused.stderr
        env = {"CHRONOQ_API_KEY": secret}
        submitted = cli("submit", "demo.add", "-d", '{"a": 1, "b": 2}', "--json", "--url", url,
                        env=env)
        assert submitted.returncode == 0, submitted.stderr
        with (pytest.raises((InvalidStatus, WebSocketException, TimeoutError)),
              connect(f"ws://127.0.0.1:{port}/v1/events") as ws):
            ws.recv(timeout=2)
        with connect(f"ws://127.0.0.1:{port}/v1/events?token={secret}") as ws:
            task = httpx.post(f"{url}/v1/tasks", json={"name": "demo.add",
                                                       "payload": {"a": 2, "b": 2}},
                              headers=bearer(secret)).json()
            deadline = time.monotonic() + 10
            statuses = []
            while "succeeded" not in statuses and time.monotonic() < deadline:
                statuses += [e["status"] for e in json.loads(ws.recv(timeout=5))
                             if e["task_id"] == task["id"]]
            assert "succeeded" in statuses
        revoked = cli("keys", "revoke", secret.split("_")[1], "--database-url", db)
        assert "revoked" in revoked.stdout
    finally:
        dev.terminate()


def test_dev_refuses_a_public_host_without_auth() -> None:
    result = cli("dev", "--host", "0.0.0.0")
    assert result.returncode != 0 and "--auth" in result.stderr
