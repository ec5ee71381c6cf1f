"""API keys on every route but health: ``Authorization: Bearer <key>``.

Scopes: ``read`` (GET), ``write`` (submit, cancel, retry, schedules), ``admin`` (all).
A key bound to a namespace sees and changes only that namespace's tasks and schedules;
anything else answers 404, so ids do not leak. With ``CHRONOQ_AUTH=false`` (what
``chronoq dev`` does on localhost) every request has full access.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chronoq.api.errors import ApiError
from chronoq.app import App
from chronoq.store.keys import ApiKey, hash_key

bearer = HTTPBearer(auto_error=False, description="an API key from `chronoq keys create`")
CACHE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's scopes and namespace (None: every namespace)."""

    key_id: str | None
    scopes: frozenset[str]
    namespace: str | None

    def owns(self, namespace: str) -> bool:
        return self.namespace is None or self.namespace == namespace

    @property
    def home(self) -> str:
        """The namespace new tasks and schedules go to."""
        return self.namespace or "default"


EVERYONE = Principal(None, frozenset({"read", "write", "admin"}), None)


class KeyCache:
    """Keys seen in the last ``CACHE_SECONDS``: a revoked key stops working within that."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[ApiKey | None, float]] = {}

    async def lookup(self, app: App, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        hit = self._keys.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        key = await app.store.authenticate(secret)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (key, now + CACHE_SECONDS)
        return key


async def identify(app: App, cache: KeyCache, secret: str | None) -> Principal:
    if not app.settings.auth:
        return EVERYONE
    if not secret:
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer "
                       "<key>' (create one with `chronoq keys create`)")
    key = await cache.lookup(app, secret)
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    return Principal(key.id, key.scopes, key.namespace)


def _cache(request: Request | WebSocket) -> KeyCache:
    state = request.app.state
    if not hasattr(state, "keys"):
        state.keys = KeyCache()
    cache: KeyCache = state.keys
    return cache


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting keys with ``scope`` (admin ⊃ write ⊃ read)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        principal = await identify(request.app.state.chronoq, _cache(request),
                                   credentials.credentials if credentials else None)
        if not _allows(principal, scope):
            raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")
        return principal

    return dependency


def _allows(principal: Principal, scope: str) -> bool:
    order = ("read", "write", "admin")
    return any(order.index(s) >= order.index(scope) for s in principal.scopes if s in order)


async def websocket_principal(websocket: WebSocket) -> Principal | None:
    """The caller of a WebSocket (key in the Authorization header or ``?token=``, since
    browsers cannot set headers on WebSockets); None when refused."""
    header = websocket.headers.get("authorization", "")
    secret = header[7:] if header.lower().startswith("bearer ") else None
    secret = secret or websocket.query_params.get("token")
    try:
        principal = await identify(websocket.app.state.chronoq, _cache(websocket), secret)
    except ApiError:
        return None
    return principal if _allows(principal, "read") else None


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
