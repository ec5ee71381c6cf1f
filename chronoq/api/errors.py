"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "details": [...]}}``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from chronoq.models import ErrorResponse
from chronoq.states import InvalidTransition
from chronoq.store import NotFound
from chronoq.store.schedules import ScheduleExists, ScheduleNotFound


class ApiError(Exception):
    """Raise from a route to answer with a given status and message."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        #: extra response headers (``Retry-After``)
        self.headers: dict[str, str] = {}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or []}}, status
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


@dataclass(frozen=True, slots=True)
class Problem:
    """What a refused request is answered, whatever the transport: the HTTP ``status``,
    the ``code`` and ``message`` of the error body, its ``details`` and extra
    ``headers`` (``Retry-After``). The gRPC API maps ``status`` to a status code."""

    status: int
    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def _validation(exc: RequestValidationError | ValidationError) -> Problem:
    details = []
    for err in exc.errors():
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        field = _field(tuple(err.get("loc", ())))
        if err.get("type") == "json_invalid":
            message = f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}"
            field = "body"
        details.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return Problem(422, "validation_error", summary or "invalid request", details)


def merged_conflict(exc: ValidationError) -> ApiError:
    """409 for changes each valid alone that the resource's other fields contradict (a
    PATCH setting ``start_at`` after the schedule's ``end_at``)."""
    reasons = "; ".join(
        str(e.get("msg", "invalid")).removeprefix("Value error, ") for e in exc.errors()
    )
    return ApiError(
        409,
        "conflicting_change",
        f"the change conflicts with the schedule's other fields: {reasons}",
    )


def problem(exc: Exception) -> Problem | None:
    """The answer to ``exc`` when it is the client's doing or the store is unavailable;
    None for anything else (a bug: a 500)."""
    if isinstance(exc, ApiError):
        details = [{"field": exc.field, "message": exc.message}] if exc.field else []
        return Problem(exc.status, exc.code, exc.message, details, dict(exc.headers))
    if isinstance(exc, RequestValidationError | ValidationError):
        return _validation(exc)
    if isinstance(exc, ScheduleNotFound):
        return Problem(404, "not_found", f"no schedule with id or name {exc.args[0]!r}")
    if isinstance(exc, NotFound):
        return Problem(404, "not_found", f"no task with id {exc.args[0]}")
    if isinstance(exc, ScheduleExists):
        return Problem(
            409,
            "schedule_exists",
            f"a schedule named {exc.args[0]!r} exists already; PATCH it instead",
            [{"field": "name", "message": "already taken"}],
        )
    if isinstance(exc, InvalidTransition):
        return Problem(409, "invalid_transition", str(exc))
    if isinstance(exc, UNAVAILABLE):
        return Problem(
            503,
            "store_unavailable",
            f"the database is unavailable ({type(exc).__name__}: {exc}); retry shortly "
            "(resubmitting with the same idempotency_key never creates a second task)",
            headers={"Retry-After": "2"},
        )
    return None


def answer(_: Request, exc: Exception) -> JSONResponse:
    """The HTTP answer to an exception :func:`problem` knows."""
    found = problem(exc)
    assert found is not None
    response = JSONResponse(found.body(), found.status)
    response.headers.update(found.headers)
    return response


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8, too deep)
        message = f"request body is not valid JSON: {exc.detail}"
        return error_response(
            422, "validation_error", message, [{"field": "body", "message": message}]
        )
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    if exc.status_code == 405:
        allow = allowed_methods(request)
        response = error_response(
            405, code, f"{request.method} is not allowed on {request.url.path}; allowed: {allow}"
        )
        response.headers["Allow"] = allow
        return response
    return error_response(exc.status_code, code, str(exc.detail))


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: every method some route serves on this path
    (Starlette names only the methods of the first route that matched the path)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


#: driver errors that mean "the database cannot be reached right now"
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    sqlite3.OperationalError,
    TimeoutError,
)


NUL_MESSAGE = "must not contain NUL (\\x00) characters"


def reject_nul(connection: HTTPConnection) -> None:
    """422 for a NUL character in any query or path parameter, checked once for every
    route (the app's own dependency). No text column can hold one (PostgreSQL refuses it
    outright, which used to surface as a 500), so it is always bad client input."""
    if connection.scope["type"] != "http":
        return  # WebSocket filters are compared in memory, never sent to the store
    found = [
        ("query", name)
        for name, value in connection.query_params.multi_items()
        if "\x00" in name or "\x00" in value
    ]
    found += [
        ("path", name)
        for name, value in connection.path_params.items()
        if isinstance(value, str) and "\x00" in value
    ]
    if found:
        raise RequestValidationError(
            [
                {
                    "loc": loc,
                    "type": "value_error",
                    "msg": NUL_MESSAGE,
                }
                for loc in found
            ]
        )


def install(api: FastAPI) -> None:
    for kind in (
        *UNAVAILABLE,
        RequestValidationError,
        ValidationError,
        ScheduleNotFound,
        ScheduleExists,
        ApiError,
        NotFound,
        InvalidTransition,
    ):
        api.add_exception_handler(kind, answer)
    api.add_exception_handler(StarletteHTTPException, _http)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error codes a route may return."""
    text = {
        400: "Bad request",
        401: "Missing, invalid or revoked API key",
        403: "The API key lacks the scope",
        404: "Unknown id",
        409: "Conflicts with the current state",
        413: "Payload too large",
        422: "Invalid input (the message names the field)",
        503: "Store unavailable",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}
