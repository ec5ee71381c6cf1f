"""The REST API (FastAPI). :func:`create_api` builds it around a :class:`chronoq.App`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chronoq import __version__
from chronoq.api import errors, events, health, metrics, ratelimit, schedules, tasks, ui, workers
from chronoq.api.limits import install_limits
from chronoq.api.retention import router as purge_router
from chronoq.app import App


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
            if owned:
                await app.close()

    api = FastAPI(
        title="chronoq",
        version=__version__,
        description="Schedule one-time and recurring tasks, run them on workers, see every "
        "attempt.",
        lifespan=lifespan,
    )
    api.state.chronoq = app
    errors.install(api)
    ratelimit.install(api, app.settings)
    api.include_router(tasks.router)
    api.include_router(purge_router)
    api.include_router(schedules.router)
    api.include_router(workers.router)
    api.include_router(events.router)
    api.include_router(health.router)
    metrics.install(api)
    install_limits(api, app.settings)
    ui.mount_ui(api)
    return api
