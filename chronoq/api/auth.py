"""API keys on every route but health: ``Authorization: Bearer <key>``.

Scopes: ``read`` (GET), ``write`` (submit, cancel, retry, schedules), ``admin`` (all).
A key bound to a namespace sees and changes only that namespace's tasks and schedules;
anything else answers 404, so ids do not leak. With ``CHRONOQ_AUTH=false`` (what
``chronoq dev`` does on localhost) every request has full access.

Look-ups are cached for ``CHRONOQ_KEY_CACHE_SECONDS`` (10 s); open event streams re-check
their key as often, so a revocation reaches HTTP and WebSocket callers alike within that.
Every authenticated request spends from its key's rate limit, and wrong keys from one
client address are throttled (:mod:`chronoq.api.ratelimit`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chronoq.api.errors import ApiError
from chronoq.api.ratelimit import Lru, RateLimits, limits_of
from chronoq.app import App
from chronoq.store.keys import ApiKey, hash_key

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="an API key from `chronoq keys create`")


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
    """Key look-ups trusted for ``ttl`` seconds: a revoked key stops working within that.

    Known keys and unknown (or revoked) secrets are kept apart, each in an LRU of at most
    ``capacity`` entries: a flood of random wrong secrets evicts the oldest wrong ones, one
    at a time, and never a valid key. ``store_lookups`` counts the look-ups that reached
    the database."""

    def __init__(self, ttl: float = 10.0, capacity: int = 10_000) -> None:
        self.ttl = ttl
        self.known: Lru[str, tuple[ApiKey, float]] = Lru(capacity)
        self.unknown: Lru[str, float] = Lru(capacity)
        self.store_lookups = 0

    def _cached(self, digest: str, now: float) -> tuple[bool, ApiKey | None]:
        known = self.known.get(digest)
        if known is not None and known[1] > now:
            return True, known[0]
        expires = self.unknown.get(digest)
        if expires is not None and expires > now:
            return True, None
        return False, None

    async def lookup(self, app: App, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        now = time.monotonic()
        hit, key = self._cached(digest, now)
        if hit:
            return key
        self.store_lookups += 1
        key = await app.store.keys.authenticate(secret)
        expires = time.monotonic() + self.ttl
        if key is None:
            self.known.pop(digest)
            self.unknown.put(digest, expires)
        else:
            self.unknown.pop(digest)
            self.known.put(digest, (key, expires))
        return key

    def expires_in(self, secret: str) -> float:
        """Seconds until the cached verdict on ``secret`` lapses (0: none is cached)."""
        digest = hash_key(secret)
        known = self.known.get(digest)
        expires = known[1] if known is not None else self.unknown.get(digest)
        return max(0.0, expires - time.monotonic()) if expires is not None else 0.0


async def identify(
    app: App,
    cache: KeyCache,
    secret: str | None,
    *,
    limits: RateLimits | None = None,
    address: str | None = None,
) -> Principal:
    """The caller holding ``secret``. With ``limits``, an ``address`` that sent too many
    wrong keys is refused (429) before its key is looked up, a wrong key counts against
    it, and a right one spends one of its key's requests."""
    if not app.settings.auth:
        return EVERYONE
    if not secret:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer "
            "<key>' (create one with `chronoq keys create`)",
        )
    if limits is not None and address is not None:
        limits.check_address(address)
    key = await cache.lookup(app, secret)
    if key is None:
        if limits is not None and address is not None:
            limits.failed(address)
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    if limits is not None:
        limits.check_key(key.id)
    return Principal(key.id, key.scopes, key.namespace)


def key_cache(api: FastAPI) -> KeyCache:
    """The key cache of the API process (the gRPC API shares the REST API's)."""
    state = api.state
    if not hasattr(state, "keys"):
        state.keys = KeyCache(ttl=state.chronoq.settings.key_cache_seconds)
    cache: KeyCache = state.keys
    return cache


def _cache(request: Request | WebSocket) -> KeyCache:
    return key_cache(request.app)


def _address(connection: Request | WebSocket) -> str:
    return connection.client.host if connection.client else "unknown"


async def _identify(connection: Request | WebSocket, secret: str | None) -> Principal:
    return await identify(
        connection.app.state.chronoq,
        _cache(connection),
        secret,
        limits=limits_of(connection.app),
        address=_address(connection),
    )


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting keys with ``scope`` (admin ⊃ write ⊃ read)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        principal = await _identify(request, credentials.credentials if credentials else None)
        return authorize(principal, scope)

    return dependency


def authorize(principal: Principal, scope: str) -> Principal:
    """``principal`` if it holds ``scope``, else 403."""
    if not _allows(principal, scope):
        raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")
    return principal


def _allows(principal: Principal, scope: str) -> bool:
    order = ("read", "write", "admin")
    return any(order.index(s) >= order.index(scope) for s in principal.scopes if s in order)


#: the ``Sec-WebSocket-Protocol`` value that says the next one is an API key
BEARER_PROTOCOL = "chronoq.bearer"


@dataclass(frozen=True, slots=True)
class SocketCaller:
    """Who opened a WebSocket: ``principal`` (None: refused, ``refusal`` says why and
    ``code`` is the close code), the ``secret`` to re-check and the ``subprotocol`` to
    accept with."""

    principal: Principal | None
    secret: str | None
    subprotocol: str | None
    code: int = 4401
    refusal: str = ""


def _socket_secret(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The key a WebSocket client sent, and the subprotocol to answer with. Browsers cannot
    set headers on WebSockets, so besides ``Authorization: Bearer`` the key may come as the
    subprotocol after ``chronoq.bearer`` (``new WebSocket(url, ["chronoq.bearer", key])``;
    the server answers ``chronoq.bearer``, never the key) or as ``?token=`` (which proxies
    log: for scripts only)."""
    offered = list(websocket.scope.get("subprotocols") or ())
    if BEARER_PROTOCOL in offered:
        rest = [p for p in offered if p != BEARER_PROTOCOL]
        return (rest[0] if rest else None), BEARER_PROTOCOL
    secret = bearer_secret(websocket.headers.get("authorization", ""))
    return secret or websocket.query_params.get("token"), None


def bearer_secret(header: str) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` value (None: no bearer key)."""
    return header[7:] if header.lower().startswith("bearer ") else None


async def websocket_caller(websocket: WebSocket) -> SocketCaller:
    """Authenticate a WebSocket as :func:`require` does an HTTP request (``read`` scope)."""
    secret, subprotocol = _socket_secret(websocket)
    try:
        principal = await _identify(websocket, secret)
    except ApiError as exc:
        code = 4429 if exc.status == 429 else 4401
        return SocketCaller(None, secret, subprotocol, code, exc.message)
    if not _allows(principal, "read"):
        return SocketCaller(None, secret, subprotocol, 4401, "this API key lacks the 'read' scope")
    return SocketCaller(principal, secret, subprotocol)


async def until_revoked(app: App, cache: KeyCache, secret: str) -> None:
    """Return once ``secret`` no longer authenticates: checked each time the cached verdict
    lapses, so an open stream sees a revocation as soon as an HTTP request would. A store
    that cannot answer keeps the stream open (it is tried again a little later)."""
    while True:
        await asyncio.sleep(max(cache.expires_in(secret), 0.05))
        try:
            if await cache.lookup(app, secret) is None:
                return
        except Exception as exc:  # the database is down: no reason to drop the listener
            log.warning(
                "could not re-check an event stream's API key: %s: %s", type(exc).__name__, exc
            )
            await asyncio.sleep(min(cache.ttl, 5.0))


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
