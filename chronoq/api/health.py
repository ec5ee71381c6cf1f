"""Liveness and readiness probes.

Readiness checks every dependency the API process needs to do its work: the store, and
the Redis broker when one is configured (without it, submitted tasks would not reach the
workers until the reconciler re-publishes them). The Redis event bridge
(``CHRONOQ_REDIS_URL``) is best-effort and not checked: losing it delays live events, not
work.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chronoq.api.errors import error_response, responses
from chronoq.app import App
from chronoq.health import CHECK_SECONDS, failures

router = APIRouter(tags=["health"])


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
    failed = await failures(readiness_checks(request.app.state.chronoq))
    if not failed:
        return JSONResponse({"status": "ready"})
    code = "store_unavailable" if failed[0][0] == "store" else "broker_unavailable"
    message = "; ".join(f"{name} unavailable: {_said(exc)}" for name, exc in failed)
    return error_response(503, code, message)


def readiness_checks(app: App) -> list[tuple[str, Awaitable[Any]]]:
    """What an API process needs to do its work (``/readyz``, and gRPC health checks)."""
    checks: list[tuple[str, Awaitable[Any]]] = [("store", app.store.ping())]
    if app.publisher is not None:
        checks.append(("broker", app.publisher.client.ping()))
    return checks


def _said(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_SECONDS:g} s"
    return f"{type(exc).__name__}: {exc}"
