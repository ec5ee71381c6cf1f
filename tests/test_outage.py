"""A database outage: the API answers 503 with a retry hint, and recovers by itself.

The outage is made by cutting a TCP proxy between chronoq and PostgreSQL (every connection
is dropped and new ones are refused), so the shared server keeps running for other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from chronoq import App
from tests.conftest import Harness, make_settings


class Proxy:
    """127.0.0.1:<port> → PostgreSQL, which can be cut and restored."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[Harness, Proxy]]:
    proxy = Proxy()
    await proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    app = App(settings=make_settings(url))
    await app.open()
    harness = Harness(app)
    try:
        yield harness, proxy
    finally:
        with contextlib.suppress(Exception):
            await harness.close()
        with contextlib.suppress(Exception):
            await proxy.cut()


async def test_outage_is_503_with_retry_after_and_recovers(
    proxied: tuple[Harness, Proxy],
) -> None:
    harness, proxy = proxied
    before = await harness.submit(name="x", idempotency_key="k1")
    await proxy.cut()
    for request in (harness.http.get("/v1/tasks"),
                    harness.http.post("/v1/tasks", json={"name": "x"}),
                    harness.http.get(f"/v1/tasks/{before['id']}")):
        response = await request
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        body = response.json()["error"]
        assert body["code"] == "store_unavailable" and "retry" in body["message"]
    assert (await harness.http.get("/readyz")).status_code == 503
    assert (await harness.http.get("/healthz")).status_code == 200

    await proxy.start()  # the database is back: no restart of chronoq needed
    for _ in range(50):
        response = await harness.http.get("/v1/tasks")
        if response.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert response.status_code == 200
    again = await harness.http.post("/v1/tasks", json={"name": "x", "idempotency_key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == before["id"]
    assert (await harness.http.get("/readyz")).status_code == 200
