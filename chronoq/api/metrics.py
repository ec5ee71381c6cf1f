"""``GET /metrics`` (Prometheus) and the request-latency middleware of the API.

:func:`install` adds both to the FastAPI app. The counters start with the first request (or
earlier, when :class:`chronoq.runner.Runner` starts them with the process); the store-wide
gauges are read in the route, before rendering.

The scrape covers every namespace (queue names, depths, task names), so it needs a key
without a namespace; a namespaced key is answered 403.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chronoq.api.auth import Reader
from chronoq.api.errors import ApiError
from chronoq.app import App
from chronoq.metrics import Metrics, metrics_for

router = APIRouter(tags=["metrics"])

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, who: Reader) -> Response:
    if who.namespace is not None:
        raise ApiError(
            403,
            "forbidden",
            "/metrics covers every namespace: scrape it with a "
            f"key without one (this key is bound to {who.namespace!r})",
        )
    app: App = request.app.state.chronoq
    found = metrics_for(app)
    if app.is_open:
        found.start(app.store)
    body, content_type = await found.scrape(request.headers.get("accept"))
    return Response(body, media_type=content_type)


class MetricsMiddleware:
    """Times each HTTP request into ``chronoq_http_request_duration_seconds``, labelled with
    the route *template* (``/v1/tasks/{task_id}``, or ``unmatched``) to bound cardinality.

    It also starts the event counters on the first request when nothing else did (an API
    created with :func:`chronoq.api.create_api` outside the runner), and stops them at
    shutdown if it started them."""

    def __init__(self, app: ASGIApp, chronoq: App, metrics: Metrics) -> None:
        self.app = app
        self.chronoq = chronoq
        self.metrics = metrics
        self._started_here = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chronoq = self.chronoq
        if chronoq.is_open and (
            self.metrics.store is not chronoq.store or not self.metrics.running
        ):
            self._started_here = self._started_here or not self.metrics.running
            self.metrics.start(chronoq.store)
        status = 500
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe_request(method, template, status, time.perf_counter() - started)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self._started_here:
                self._started_here = False
                await self.metrics.stop()
            await send(message)

        return lifespan_send


def install(api: FastAPI) -> None:
    """Add ``/metrics`` and the latency middleware to ``api`` (``api.state.chronoq`` set)."""
    app: App = api.state.chronoq
    api.add_middleware(MetricsMiddleware, chronoq=app, metrics=metrics_for(app))
    api.include_router(router)
