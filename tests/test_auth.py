"""API keys: hashed storage, scopes, namespaces, rate limits, and the WebSocket/CLI using
them."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from chronoq import App
from chronoq.api import create_api
from chronoq.api.auth import KeyCache
from tests.conftest import Harness, make_settings, running
from tests.processes import Proc, cli, free_port, wait_ready


@pytest.fixture
async def secured(db_url: str) -> AsyncIterator[Harness]:
    async with running(App(settings=make_settings(db_url, auth=True))) as harness:
        yield harness


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def bearer_protocol(secret: str) -> list[Subprotocol]:
    """The dashboard's way to send a key on a WebSocket: as a subprotocol."""
    return [Subprotocol("chronoq.bearer"), Subprotocol(secret)]


async def test_keys_are_required_and_stored_hashed(secured: Harness) -> None:
    http = secured.http
    missing = await http.get("/v1/tasks")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    wrong = await http.get("/v1/tasks", headers=bearer("cq_nope_nope"))
    assert wrong.status_code == 401
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200

    key, secret = await secured.store.keys.create("ci", ["write"])
    assert (await http.get("/v1/tasks", headers=bearer(secret))).status_code == 200
    async with secured.store.conn() as c:
        rows = await c.fetch("SELECT * FROM api_keys")
    assert secret not in json.dumps([dict(r) for r in rows], default=str)

    fresh, fresh_secret = await secured.store.keys.create("temp", ["read"])
    assert await secured.store.keys.revoke(fresh.id)
    assert (await http.get("/v1/tasks", headers=bearer(fresh_secret))).status_code == 401
    spec = (await http.get("/openapi.json")).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert key.allows("read") and not key.allows("admin")


async def test_scopes(secured: Harness) -> None:
    http = secured.http
    _, reader = await secured.store.keys.create("reader", ["read"])
    _, writer = await secured.store.keys.create("writer", ["write"])
    denied = await http.post("/v1/tasks", json={"name": "x"}, headers=bearer(reader))
    assert denied.status_code == 403 and "'write' scope" in denied.json()["error"]["message"]
    task = (await http.post("/v1/tasks", json={"name": "x"}, headers=bearer(writer))).json()
    assert (await http.get(f"/v1/tasks/{task['id']}", headers=bearer(reader))).status_code == 200
    assert (
        await http.post(f"/v1/tasks/{task['id']}/cancel", headers=bearer(reader))
    ).status_code == 403
    assert (await http.get("/v1/workers", headers=bearer(reader))).status_code == 200
    assert (await http.get("/metrics", headers=bearer(reader))).status_code == 200
    assert (await http.get("/metrics")).status_code == 401


async def test_namespaces_are_isolated(secured: Harness) -> None:
    http = secured.http
    _, alpha = await secured.store.keys.create("alpha", ["write"], namespace="alpha")
    _, beta = await secured.store.keys.create("beta", ["write"], namespace="beta")
    _, admin = await secured.store.keys.create("ops", ["admin"])
    task = (
        await http.post("/v1/tasks", json={"name": "x", "queue": "q1"}, headers=bearer(alpha))
    ).json()
    assert task["namespace"] == "alpha"
    for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/retry")]:
        response = await http.request(method, f"/v1/tasks/{task['id']}{path}", headers=bearer(beta))
        assert response.status_code == 404, (method, path)
    assert (await http.get("/v1/tasks", headers=bearer(beta))).json()["items"] == []
    assert (await http.get("/v1/queues", headers=bearer(beta))).json() == []
    assert [q["queue"] for q in (await http.get("/v1/queues", headers=bearer(alpha))).json()] == [
        "q1"
    ]
    everything = (await http.get("/v1/tasks", headers=bearer(admin))).json()["items"]
    assert [t["id"] for t in everything] == [task["id"]]
    # the same idempotency key in another namespace is another task (tests/test_namespaces.py)
    for who, status in ((alpha, 201), (alpha, 200), (beta, 201)):
        response = await http.post(
            "/v1/tasks", json={"name": "x", "idempotency_key": "k"}, headers=bearer(who)
        )
        assert response.status_code == status, response.text

    schedule = {"name": "nightly", "cron": "@daily", "task": {"name": "x"}}
    created = await http.post("/v1/schedules", json=schedule, headers=bearer(alpha))
    assert created.status_code == 201 and created.json()["namespace"] == "alpha"
    for method, path in [
        ("GET", ""),
        ("POST", "/pause"),
        ("POST", "/trigger"),
        ("DELETE", ""),
        ("GET", "/runs"),
    ]:
        response = await http.request(method, f"/v1/schedules/nightly{path}", headers=bearer(beta))
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
    dev = Proc(
        ["dev", "--demo", "--auth", "--port", str(port), "--database-url", db],
        {},
        tmp_path / "dev.log",
    )
    try:
        wait_ready(url, dev)
        refused = cli("tasks", "ls", "--url", url)
        assert refused.returncode != 0 and "missing API key" in refused.stderr
        env = {"CHRONOQ_API_KEY": secret}
        submitted = cli(
            "submit", "demo.add", "-d", '{"a": 1, "b": 2}', "--json", "--url", url, env=env
        )
        assert submitted.returncode == 0, submitted.stderr
        with (
            pytest.raises((InvalidStatus, WebSocketException, TimeoutError)),
            connect(f"ws://127.0.0.1:{port}/v1/events") as ws,
        ):
            ws.recv(timeout=2)
        with connect(f"ws://127.0.0.1:{port}/v1/events?token={secret}") as ws:
            task = httpx.post(
                f"{url}/v1/tasks",
                json={"name": "demo.add", "payload": {"a": 2, "b": 2}},
                headers=bearer(secret),
            ).json()
            deadline = time.monotonic() + 10
            statuses = []
            while "succeeded" not in statuses and time.monotonic() < deadline:
                statuses += [
                    e["status"]
                    for e in json.loads(ws.recv(timeout=5))
                    if e["task_id"] == task["id"]
                ]
            assert "succeeded" in statuses
        # the dashboard's way: the key as a subprotocol, not in the URL; revoking the key
        # with the CLI closes the open stream within the default 10 s key cache
        with connect(
            f"ws://127.0.0.1:{port}/v1/events", subprotocols=bearer_protocol(secret)
        ) as ws:
            assert ws.subprotocol == "chronoq.bearer"
            revoked = cli("keys", "revoke", secret.split("_")[1], "--database-url", db)
            assert "revoked" in revoked.stdout
            at = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while time.monotonic() - at < 15:
                    ws.recv(timeout=15)  # the demo's own events may arrive meanwhile
            assert ws.close_code == 4401, ws.close_reason
            assert time.monotonic() - at < 10 + 2
    finally:
        dev.terminate()


def test_dev_refuses_a_public_host_without_auth() -> None:
    result = cli("dev", "--host", "0.0.0.0")
    assert result.returncode != 0 and "--auth" in result.stderr


# -- event streams and revocation ------------------------------------------------------------
@asynccontextmanager
async def serving(app: App) -> AsyncIterator[str]:
    """The API of the open ``app`` on a real socket (uvicorn in this event loop): host:port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(app), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    job = asyncio.create_task(server.serve())
    while not server.started:
        assert not job.done(), job.result()
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await job


async def closed_code(ws: ClientConnection, within: float) -> int | None:
    """The close code once the server closes ``ws`` (events arriving meanwhile are read)."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return ws.close_code


@pytest.fixture
async def fast_revocation(db_url: str) -> AsyncIterator[Harness]:
    settings = make_settings(db_url, auth=True, key_cache_seconds=1.0)
    async with running(App(settings=settings)) as harness:
        yield harness


async def test_revoking_a_key_closes_its_event_streams(fast_revocation: Harness) -> None:
    store = fast_revocation.store
    reader, secret = await store.keys.create("dashboard", ["read"])
    other, other_secret = await store.keys.create("other", ["read"])
    _, writer = await store.keys.create("writer", ["write"])
    async with serving(fast_revocation.app) as where:
        url = f"ws://{where}/v1/events"
        async with (
            ws_connect(url, subprotocols=bearer_protocol(secret)) as browser,
            ws_connect(url, additional_headers=bearer(secret)) as script,
            ws_connect(url, additional_headers=bearer(other_secret)) as bystander,
        ):
            assert browser.subprotocol == "chronoq.bearer"
            await asyncio.sleep(2.5)  # more than two re-checks: a valid key stays connected
            async with httpx.AsyncClient(base_url=f"http://{where}") as http:
                task = (
                    await http.post("/v1/tasks", json={"name": "x"}, headers=bearer(writer))
                ).json()
            for ws in (browser, script, bystander):
                events = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert events[0]["task_id"] == task["id"]

            assert await store.keys.revoke(reader.id)
            revoked_at = time.monotonic()
            assert await closed_code(browser, within=4) == 4401
            assert await closed_code(script, within=4) == 4401
            assert time.monotonic() - revoked_at < 1.0 + 2.0  # the cache's 1 s, and slack
            assert bystander.close_code is None  # another key's stream stays open
            async with httpx.AsyncClient(base_url=f"http://{where}") as http:
                answer = await http.get("/v1/tasks", headers=bearer(secret))
                assert answer.status_code == 401
        assert other.id != reader.id


async def test_refused_event_streams_close_with_4401(secured: Harness) -> None:
    async with serving(secured.app) as where:
        url = f"ws://{where}/v1/events"
        for kwargs in (
            {},
            {"subprotocols": ["chronoq.bearer", "cq_bad_bad"]},
            {"subprotocols": ["chronoq.bearer"]},
            {"additional_headers": bearer("x")},
        ):
            async with ws_connect(url, **kwargs) as ws:
                assert await closed_code(ws, within=5) == 4401, kwargs
                if "subprotocols" in kwargs:  # echoed, so a browser sees the 4401
                    assert ws.subprotocol == "chronoq.bearer"


async def test_wrong_keys_on_sockets_are_throttled_too(db_url: str) -> None:
    settings = make_settings(db_url, auth=True, auth_failures_per_minute=2)
    async with running(App(settings=settings)) as harness:
        _, good = await harness.store.keys.create("good", ["read"])
        async with serving(harness.app) as where:
            url = f"ws://{where}/v1/events"
            codes = []
            for secret in ("cq_a_wrong", "cq_b_wrong", "cq_c_wrong", good):
                async with ws_connect(url, subprotocols=bearer_protocol(secret)) as ws:
                    codes.append(await closed_code(ws, within=5))
            assert codes == [4401, 4401, 4429, 4429]
            assert "too many invalid API keys" in (ws.close_reason or "")


# -- /metrics and namespaces ---------------------------------------------------------------
async def test_metrics_need_a_key_without_namespace(secured: Harness) -> None:
    http = secured.http
    _, alpha = await secured.store.keys.create("alpha", ["write"], namespace="alpha")
    _, scraper = await secured.store.keys.create("prometheus", ["read"])
    created = await http.post(
        "/v1/tasks", json={"name": "alpha.secret", "queue": "alpha-q"}, headers=bearer(alpha)
    )
    assert created.status_code == 201
    denied = await http.get("/metrics", headers=bearer(alpha))
    assert denied.status_code == 403, denied.text
    assert denied.json()["error"]["code"] == "forbidden"
    assert "alpha-q" not in denied.text and "chronoq_" not in denied.text
    scraped = await http.get("/metrics", headers=bearer(scraper))
    assert scraped.status_code == 200 and 'queue="alpha-q"' in scraped.text


# -- rate limits and the key cache ---------------------------------------------------------
def client(harness: Harness, address: str, api: Any = None) -> httpx.AsyncClient:
    """An HTTP client to the harness's API (or ``api``) that comes from ``address``."""
    transport = httpx.ASGITransport(app=api or create_api(harness.app), client=(address, 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://chronoq")


async def test_a_key_over_its_rate_gets_429_then_goes_on(db_url: str) -> None:
    settings = make_settings(db_url, auth=True, rate_limit=2.0, rate_limit_burst=3)
    async with running(App(settings=settings)) as harness:
        _, busy = await harness.store.keys.create("busy", ["read"])
        _, calm = await harness.store.keys.create("calm", ["read"])
        http = harness.http
        answers = [await http.get("/v1/tasks", headers=bearer(busy)) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        limited = await http.get("/v1/tasks", headers=bearer(busy))
        assert limited.status_code == 429, limited.text
        error = limited.json()["error"]
        assert error["code"] == "rate_limited" and "CHRONOQ_RATE_LIMIT" in error["message"]
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert (await http.get("/v1/tasks", headers=bearer(calm))).status_code == 200
        await asyncio.sleep(retry_after)
        assert (await http.get("/v1/tasks", headers=bearer(busy))).status_code == 200


async def test_wrong_keys_from_one_address_are_throttled(db_url: str) -> None:
    settings = make_settings(db_url, auth=True, auth_failures_per_minute=3)
    async with running(App(settings=settings)) as harness:
        _, good = await harness.store.keys.create("good", ["read"])
        api = create_api(harness.app)
        async with (
            client(harness, "203.0.113.7", api) as attacker,
            client(harness, "198.51.100.2", api) as neighbour,
        ):
            for _ in range(10):  # no key at all costs nothing and is not counted
                assert (await attacker.get("/v1/tasks")).status_code == 401
            for _ in range(3):
                wrong = await attacker.get(
                    "/v1/tasks", headers=bearer(f"cq_x_{secrets.token_hex(8)}")
                )
                assert wrong.status_code == 401
            lookups = api.state.keys.store_lookups
            throttled = await attacker.get("/v1/tasks", headers=bearer("cq_x_another"))
            assert throttled.status_code == 429, throttled.text
            assert throttled.json()["error"]["code"] == "rate_limited"
            assert int(throttled.headers["retry-after"]) >= 1
            # refused before the key is checked: even a good key, and no database look-up
            assert (await attacker.get("/v1/tasks", headers=bearer(good))).status_code == 429
            assert api.state.keys.store_lookups == lookups
            assert (await neighbour.get("/v1/tasks", headers=bearer(good))).status_code == 200


async def test_the_key_cache_evicts_one_entry_not_all(secured: Harness) -> None:
    app = secured.app
    _, good = await secured.store.keys.create("good", ["read"])
    cache = KeyCache(ttl=60, capacity=20)
    assert await cache.lookup(app, good) is not None
    known_bad = [f"cq_bad_{n}" for n in range(20)]
    for secret in known_bad:
        assert await cache.lookup(app, secret) is None
    assert cache.store_lookups == 21
    assert await cache.lookup(app, "cq_bad_one_more") is None  # the 21st wrong secret
    for secret in known_bad[1:]:  # only the oldest one made room
        assert await cache.lookup(app, secret) is None
    assert cache.store_lookups == 22
    for _ in range(100):  # a flood of random wrong secrets never evicts a valid key
        assert await cache.lookup(app, f"cq_x_{secrets.token_hex(8)}") is None
    assert len(cache.unknown) == 20
    before = cache.store_lookups
    assert await cache.lookup(app, good) is not None
    assert cache.store_lookups == before
