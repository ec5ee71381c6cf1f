"""A small synchronous HTTP client for the chronoq API (used by the CLI)."""

from __future__ import annotations

from typing import Any, Self

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """The API refused a request; ``message`` is its explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def check(response: httpx.Response) -> None:
    """Raise :class:`ClientError` with the API's message when ``response`` is a refusal."""
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise ClientError(response.status_code, message)


def http_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """What every chronoq HTTP client (sync or async) is opened with."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return {"base_url": base_url.rstrip("/"), "timeout": timeout, "headers": headers}


def unreachable(base_url: object, exc: Exception, hint: str = "") -> ClientError:
    """The error for an API that cannot be reached (status 0: no answer)."""
    return ClientError(0, f"cannot reach the chronoq API at {base_url}: {exc}{hint}")


class HttpClient:
    """A blocking connection to the API (base URL, key, timeout), closed by ``with``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(**http_options(base_url, api_key, timeout), transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(HttpClient):
    """The CLI's client: raw JSON in and out."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; returns the decoded JSON body (None for 204)."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            hint = " (is `chronoq dev` or `chronoq api` running?)"
            raise unreachable(self.http.base_url, exc, hint) from None
        check(response)
        return None if response.status_code == 204 else response.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/tasks", json=spec)
        return result

    def list_tasks(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        result: dict[str, Any] = self.request("GET", "/v1/tasks", params=params)
        return result

    def get_task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/tasks/{task_id}")
        return result

    def cancel(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/tasks/{task_id}/cancel")
        return result

    def retry(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/tasks/{task_id}/retry")
        return result

    def bulk(
        self,
        action: str,
        filter: dict[str, Any],
        *,
        dry_run: bool = False,
        limit: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        """``action`` ("retry" or "cancel") every task ``filter`` selects (at most ``limit``
        past the cursor ``after``): ``{matched, done, next_cursor}``."""
        body = {
            "filter": {k: v for k, v in filter.items() if v is not None},
            "dry_run": dry_run,
            "limit": limit,
            "after": after,
        }
        result: dict[str, Any] = self.request("POST", f"/v1/tasks/{action}", json=body)
        return result

    def dead_letters(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        result: list[dict[str, Any]] = self.request("GET", "/v1/dead-letters", params=params)
        return result

    def queues(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/queues")
        return result

    # -- workflows -------------------------------------------------------------------------
    def start_workflow(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/workflows``: start the graph ``spec`` (nodes, edges...)."""
        result: dict[str, Any] = self.request("POST", "/v1/workflows", json=spec)
        return result

    def list_workflows(self, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        result: dict[str, Any] = self.request("GET", "/v1/workflows", params=params)
        return result

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/workflows/{workflow_id}")
        return result

    def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/workflows/{workflow_id}/cancel")
        return result

    def retry_workflow(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/workflows/{workflow_id}/retry")
        return result
