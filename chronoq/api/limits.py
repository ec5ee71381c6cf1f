"""Limits on what a client may make the API do: request body size and schedule rate.

:func:`install_limits` adds :class:`BodyLimitMiddleware` to the FastAPI app: a request
whose body is larger than ``settings.request_limit()`` (``CHRONOQ_MAX_REQUEST_BYTES``,
default 2 x ``max_payload_bytes`` + 64 KiB) is answered ``413 payload_too_large`` — at
once when its ``Content-Length`` says so, or as soon as a streamed (chunked) body grows
past the limit, before anything parses it.

:func:`check_schedule_rate` refuses (422) a cron or interval rule that fires more than
``settings.max_fires_per_minute`` times in a minute; the schedule routes call it.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chronoq.api.errors import ApiError, error_response
from chronoq.config import Settings
from chronoq.models import ScheduleFields, ScheduleUpdate
from chronoq.recurrence import Recurrence


class _TooLarge(Exception):
    """The request body grew past the limit while the app was reading it."""


def too_large(message: str) -> Any:
    return error_response(
        413, "payload_too_large", message, [{"field": "body", "message": message}]
    )


class BodyLimitMiddleware:
    """Answers 413 to HTTP requests whose body is larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: int | None) -> str:
        said = f"is {size} bytes" if size is not None else f"is larger than {self.max_bytes} bytes"
        return f"request body {said}; the limit is {self.max_bytes} (CHRONOQ_MAX_REQUEST_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large(self._message(int(value)))(scope, receive, send)
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app makes of the cut body, the answer is our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await too_large(self._message(None))(scope, receive, send)


def install_limits(api: FastAPI, settings: Settings) -> None:
    """Add the request body limit to ``api`` (once; a second call does nothing)."""
    if getattr(api.state, "chronoq_limits", False):
        return
    api.state.chronoq_limits = True
    api.add_middleware(BodyLimitMiddleware, max_bytes=settings.request_limit())


def fires_per_minute(recurrence: Recurrence, *, now: float | None = None, ceiling: int = 60) -> int:
    """How many times ``recurrence`` fires in its busiest minute (counted up to ``ceiling``;
    cron fires at most once a second, so 60 is exact for cron).

    Samples the 60 s from its next fire time on: every minute a cron fires in has the
    same seconds, and an interval is the same everywhere, so that minute is a busiest one.
    """
    start = recurrence.next_after(time.time() if now is None else now)
    fires = recurrence.upcoming(start, count=ceiling - 1, until=start + 59.999)
    return 1 + len(fires)


def check_schedule_rate(spec: ScheduleFields | ScheduleUpdate, settings: Settings) -> None:
    """Raise a 422 naming the field when the rule in ``spec`` fires more often than
    ``settings.max_fires_per_minute``. A PATCH without a new rule passes."""
    limit = settings.max_fires_per_minute
    if spec.interval_seconds is not None:
        rate = 60.0 / spec.interval_seconds
        if rate > limit:
            raise ApiError(
                422,
                "validation_error",
                f"interval_seconds {spec.interval_seconds:g} fires {rate:g} times a minute; "
                f"the limit is {limit} (CHRONOQ_MAX_FIRES_PER_MINUTE), so at least "
                f"{60 / limit:g} seconds",
                "interval_seconds",
            )
        return
    if spec.cron is None:
        return
    try:
        rate = fires_per_minute(Recurrence(cron=spec.cron, timezone=spec.timezone or "UTC"))
    except Exception:  # a rule that never fires is not too frequent; validation reports it
        return
    if rate > limit:
        raise ApiError(
            422,
            "validation_error",
            f"cron {spec.cron!r} fires {rate} times a minute; the limit is {limit} "
            "(CHRONOQ_MAX_FIRES_PER_MINUTE)",
            "cron",
        )
