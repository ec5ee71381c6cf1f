"""``chronoq.http``: call a URL with the payload; a 2xx answer is success.

Payload: ``{"url": ..., "method": "POST", "headers": {...}, "json": ... | "body": "...",
"timeout_seconds": 30}``. The result keeps the status code and the (truncated) body.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from chronoq.executors.base import Executor, TaskFailed

NAME = "chronoq.http"
MAX_BODY = 64 * 1024


class HttpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    method: str = Field("POST", pattern=r"^(GET|POST|PUT|PATCH|DELETE|HEAD)$")
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    body: str | None = None
    timeout_seconds: float = Field(30.0, gt=0, le=3600)


class HttpExecutor(Executor):
    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def run(self, payload: dict[str, Any]) -> Any:
        try:
            request = HttpRequest.model_validate(payload)
        except ValueError as exc:
            raise TaskFailed(f"bad chronoq.http payload: {exc}") from None
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        kwargs: dict[str, Any] = {"headers": request.headers, "timeout": request.timeout_seconds}
        if request.body is not None:
            kwargs["content"] = request.body
        elif "json" in payload:
            kwargs["json"] = request.json_body
        try:
            response = await self._client.request(request.method, str(request.url), **kwargs)
        except httpx.HTTPError as exc:
            raise TaskFailed(f"{request.method} {request.url} failed: {exc!r}") from None
        text = response.text[:MAX_BODY]
        if not response.is_success:
            raise TaskFailed(f"{request.method} {request.url} answered {response.status_code}: "
                             f"{text[:500]}")
        try:
            body: Any = response.json()
        except ValueError:
            body = text
        return {"status_code": response.status_code, "body": body}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
