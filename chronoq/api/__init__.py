"""The REST API (FastAPI). :func:`create_api` builds it around a :class:`chronoq.App`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from chronoq import __version__
from chronoq.api import (
    errors,
    events,
    health,
    history,
    metrics,
    preview,
    queues,
    ratelimit,
    replay,
    schedules,
    tasks,
    ui,
    workers,
    workflows,
)
from chronoq.api.bulk import router as bulk_router
from chronoq.api.limits import install_limits
from chronoq.api.retention import router as purge_router
from chronoq.api.tasklogs import router as task_logs_router
from chronoq.app import App
from chronoq.models import JSON_VALUE_SCHEMA


def create_api(app: App) -> FastAPI:
    """The HTTP API for ``app``. Opens the app's store on start-up unless it is open already
    (``chronoq dev`` shares one open store between API, scheduler and workers)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        owned = not app.is_open
        if owned:
            await app.open()
        try:
            yield
        finally:
            replay.close(api.state)
            if owned:
                await app.close()

    api = FastAPI(
        title="chronoq",
        version=__version__,
        description="Schedule one-time and recurring tasks, run them on workers, see every "
        "attempt.",
        lifespan=lifespan,
        dependencies=[Depends(errors.reject_nul)],
    )
    api.state.chronoq = app
    _document(api)
    errors.install(api)
    ratelimit.install(api, app.settings)
    api.include_router(tasks.router)
    api.include_router(task_logs_router)
    api.include_router(queues.router)
    api.include_router(purge_router)
    api.include_router(bulk_router)
    api.include_router(schedules.router)
    api.include_router(workers.router)
    api.include_router(workflows.router)
    api.include_router(history.router)
    api.include_router(preview.router)
    api.include_router(events.router)
    api.include_router(health.router)
    metrics.install(api)
    install_limits(api, app.settings)
    ui.mount_ui(api)
    return api


def _document(api: FastAPI) -> None:
    """Complete the OpenAPI document with what FastAPI cannot derive: the ``JsonValue``
    component payload schemas refer to (a recursive schema pydantic cannot emit for a
    field it validates as plain ``dict``), and that no parameter may hold a NUL
    (:func:`chronoq.api.errors.reject_nul` refuses one on every route)."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {})["JsonValue"] = (
                JSON_VALUE_SCHEMA
            )
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        _no_nul(parameter.get("schema", {}))
        return api.openapi_schema or {}

    api.openapi = openapi  # type: ignore[method-assign]


def _no_nul(schema: dict[str, Any]) -> None:
    """Give every string (branch) of a parameter schema without a pattern one that
    excludes NUL."""
    for branch in [schema, *schema.get("anyOf", [])]:
        if branch.get("type") == "string" and "pattern" not in branch:
            branch["pattern"] = "^[^\\x00]*$"
