"""Liveness and readiness of a chronoq process, for orchestrators (Kubernetes, compose).

Liveness (``/healthz``) answers from the process's own event loop: an answer means the loop
runs, and a component (scheduler, worker) that ended on its own makes it fail. It never
looks at the database, so a database outage does not get every pod restarted. Readiness
(``/readyz``) asks the store and, when configured, the Redis broker and event bridge, each
within :data:`CHECK_SECONDS`; a process that is stopping (a worker draining its tasks) is
not ready either. ``chronoq scheduler|worker --health-port`` serves both with
:func:`health_app`; :func:`readiness` is the shared check any other server can call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chronoq.store import Store

#: the longest one dependency may take to answer a readiness check
CHECK_SECONDS = 2.0


class Readiness:
    """Checks the store and Redis URLs; keeps one Redis client per URL between checks."""

    def __init__(self, redis_urls: Iterable[str | None] = ()) -> None:
        self.redis_urls = sorted({url for url in redis_urls if url})
        self._clients: dict[str, redis.Redis] = {}

    async def problems(self, store: Store) -> list[str]:
        """What is unreachable, e.g. ``["store: TimeoutError()"]``; empty when ready."""
        checks = [
            ("store", store.ping()),
            *((f"redis {_hide_password(url)}", self._ping(url)) for url in self.redis_urls),
        ]
        return [f"{name}: {exc!r}" for name, exc in await failures(checks)]

    async def _ping(self, url: str) -> None:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = redis.from_url(
                url, socket_timeout=CHECK_SECONDS, socket_connect_timeout=CHECK_SECONDS
            )
        await client.ping()

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


async def failures(checks: Iterable[tuple[str, Awaitable[Any]]]) -> list[tuple[str, Exception]]:
    """Run the named checks at once; those that raised or took longer than
    :data:`CHECK_SECONDS` (``TimeoutError``), with what they raised, in the given order."""
    named = list(checks)
    results = await asyncio.gather(*(_within(c) for _, c in named), return_exceptions=True)
    failed: list[tuple[str, Exception]] = []
    for (name, _), result in zip(named, results, strict=True):
        if isinstance(result, Exception):
            failed.append((name, result))
        elif isinstance(result, BaseException):
            raise result
    return failed


async def _within(check: Awaitable[Any]) -> None:
    async with asyncio.timeout(CHECK_SECONDS):
        await check


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if userinfo else url


async def readiness(store: Store, redis_urls: Iterable[str | None] = ()) -> list[str]:
    """One-off check (a fresh Redis client each call): the problems, empty when ready."""
    check = Readiness(redis_urls)
    try:
        return await check.problems(store)
    finally:
        await check.close()


def not_ready(problems: list[str]) -> JSONResponse:
    """The 503 body, in the API's error format."""
    return JSONResponse(
        {"error": {"code": "not_ready", "message": "; ".join(problems), "details": problems}}, 503
    )


def health_app(
    store: Callable[[], Store],
    readiness: Readiness,
    dead: Callable[[], list[str]],
    stopping: Callable[[], bool],
    starting: Callable[[], list[str]] = list,
) -> Starlette:
    """``/healthz`` and ``/readyz`` for one process.

    ``dead`` names the components that ended (liveness fails); ``stopping`` says the
    process is shutting down (readiness fails, liveness holds so a drain is not killed);
    ``starting`` names the components not serving yet (a worker not registered)."""

    async def healthz(_request: Request) -> JSONResponse:
        ended = dead()
        if ended:
            return JSONResponse(
                {
                    "error": {
                        "code": "not_alive",
                        "message": f"{', '.join(ended)} stopped",
                        "details": ended,
                    }
                },
                503,
            )
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        if stopping():
            return not_ready(["stopping"])
        problems = [f"{name} starting" for name in starting()]
        problems += await readiness.problems(store())
        return not_ready(problems) if problems else JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


def probe(environ: dict[str, str], timeout: float = 3.0) -> int:
    """The image's ``HEALTHCHECK`` (``python -m chronoq.health``): 0 when this container's
    ``/healthz`` answers 200, on ``CHRONOQ_HEALTH_PORT`` if set, else the API's
    ``CHRONOQ_PORT`` (8000)."""
    import httpx

    from chronoq.metrics import parse_listen

    listen = environ.get("CHRONOQ_HEALTH_PORT") or environ.get("CHRONOQ_PORT") or "8000"
    host, port = parse_listen(listen, "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        return (
            0
            if httpx.get(f"http://{host}:{port}/healthz", timeout=timeout).status_code == 200
            else 1
        )
    except httpx.HTTPError:
        return 1


if __name__ == "__main__":
    import os
    import sys

    sys.exit(probe(dict(os.environ)))
