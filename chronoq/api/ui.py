"""The web dashboard at ``/ui``: static HTML, CSS and ES modules shipped as package data
(``chronoq/ui/static``), no build step. The page talks to the REST API and the
``/v1/events`` WebSocket of the same server; call :func:`mount_ui` on the FastAPI app."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


def static_dir() -> Path:
    """The folder holding index.html and its assets (a real folder: pip installs package
    data as files, and StaticFiles serves from a directory)."""
    folder = files("chronoq").joinpath("ui", "static")
    path = Path(str(folder))
    if not (path / "index.html").is_file():
        raise RuntimeError(f"chronoq UI files not found in {path}; reinstall chronoq")
    return path


# The page loads only its own files. One constant, never built from the request: a Host
# header is the client's to choose. CSP Level 3 'self' also matches ws:/wss: on the page's
# own host and port (Chromium, Firefox and Safari do so), which is all the event socket needs.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _Static(StaticFiles):
    """StaticFiles that makes browsers revalidate (ETag → 304) so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def router(folder: Path) -> APIRouter:
    ui = APIRouter(include_in_schema=False)
    index = folder / "index.html"

    @ui.get("/ui")
    @ui.get("/ui/")
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @ui.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)

    return ui


def mount_ui(api: FastAPI) -> None:
    """Serve the dashboard: ``/ui`` (the page), ``/ui/static/...`` (its assets) and a
    redirect from ``/`` to ``/ui``."""
    folder = static_dir()
    api.include_router(router(folder))
    api.mount("/ui/static", _Static(directory=folder), name="ui-static")
