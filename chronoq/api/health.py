"""Liveness and readiness probes.

Readiness checks every dependency the API process needs to do its work: the store, and
the Redis broker when one is configured (without it, submitted tasks would not reach the
workers until the reconciler re-publishes them). The Redis event bridge
(``CHRONOQ_REDIS_URL``) is best-effort and not checked: losing it delays live events, not
work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chronoq.api.errors import error_response, responses
from chronoq.app import App

router = APIRouter(tags=["health"])

#: longest readiness waits for one dependency (a blackholed host never refuses)
CHECK_SECONDS = 2.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the store and the Redis broker (if any) answer",
    responses=responses(503),
)
async def readyz(request: Request) -> JSONResponse:
    """`503` naming each dependency that does not answer within 2 s: `store_unavailable`
    when the store is among them, else `broker_unavailable`."""
    app: App = request.app.state.chronoq
    probes: dict[str, Callable[[], Awaitable[Any]]] = {"store": app.store.ping}
    if app.publisher is not None:
        probes["broker"] = app.publisher.client.ping
    errors = await asyncio.gather(*(_probe(p) for p in probes.values()))
    failed = {name: error for name, error in zip(probes, errors, strict=True) if error}
    if not failed:
        return JSONResponse({"status": "ready"})
    code = "store_unavailable" if "store" in failed else "broker_unavailable"
    message = "; ".join(f"{name} unavailable: {error}" for name, error in failed.items())
    return error_response(503, code, message)


async def _probe(check: Callable[[], Awaitable[Any]]) -> str | None:
    """None when ``check`` answers in time, else what went wrong."""
    try:
        await asyncio.wait_for(check(), CHECK_SECONDS)
    except TimeoutError:
        return f"no answer within {CHECK_SECONDS:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
