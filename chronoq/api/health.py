"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chronoq.api.errors import responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the store answers", responses=responses(503))
async def readyz(request: Request) -> JSONResponse:
    try:
        await request.app.state.chronoq.store.ping()
    except Exception as exc:
        return JSONResponse({"error": {"code": "store_unavailable",
                                       "message": f"store unavailable: {exc}", "details": []}},
                            503)
    return JSONResponse({"status": "ready"})
