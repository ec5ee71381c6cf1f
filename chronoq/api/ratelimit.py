"""Request rate limits: a token bucket per API key, and one per client address for failed
authentication.

Each API process keeps its own buckets in memory (no shared state, nothing on the hot
path but a dict look-up): a key may make ``CHRONOQ_RATE_LIMIT`` requests a second,
sustained, with bursts of up to ``CHRONOQ_RATE_LIMIT_BURST``; a client address may present
``CHRONOQ_AUTH_FAILURES_PER_MINUTE`` wrong keys a minute, after which it is answered 429
before its key is even looked up. Both answers are ``429 rate_limited`` with
``Retry-After``. The buckets live in bounded LRU maps, so a flood of new keys or addresses
costs bounded memory and evicts the least recently seen, never everything.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import FastAPI

from chronoq.api.errors import ApiError, answer
from chronoq.config import Settings

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A mapping of at most ``capacity`` items that drops the least recently used one when
    a new one would not fit (a full cache loses one entry, not all of them)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` a second; a request spends one."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is there now); spends nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Spend a token and answer 0, or answer the seconds until one is there."""
        wait = self.wait(now)
        if wait == 0.0:
            self.tokens -= 1
        return wait


class Limiter:
    """Token buckets by name (a key id, a client address), made full on first use."""

    def __init__(self, rate: float, burst: float, capacity: int = 10_000) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: Lru[str, TokenBucket] = Lru(capacity)

    def _bucket(self, name: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets.put(name, bucket)
        return bucket

    def wait(self, name: str) -> float:
        """Seconds until ``name`` may go on (0: now), without spending."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        return self._bucket(name, now).wait(now)

    def take(self, name: str) -> float:
        """Spend one of ``name``'s tokens (0 answered) or say how long until there is one."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        return self._bucket(name, now).take(now)


class RateLimited(ApiError):
    """429 ``rate_limited``, answered with ``Retry-After`` (whole seconds, at least 1)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(429, "rate_limited", message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The API process's buckets: requests per key, failed authentications per address."""

    per_key: Limiter
    failures: Limiter

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        per_minute = settings.auth_failures_per_minute
        return cls(
            Limiter(settings.rate_limit, settings.rate_limit_burst),
            Limiter(per_minute / 60.0, per_minute),
        )

    def check_key(self, key_id: str) -> None:
        """Spend a request of ``key_id``; raise :class:`RateLimited` when it has none."""
        wait = self.per_key.take(key_id)
        if wait > 0:
            raise RateLimited(
                "too many requests with this API key; the limit is "
                f"{self.per_key.rate:g} a second (CHRONOQ_RATE_LIMIT)",
                wait,
            )

    def check_address(self, address: str) -> None:
        """Raise :class:`RateLimited` when ``address`` has used up its failed attempts."""
        wait = self.failures.wait(address)
        if wait > 0:
            raise RateLimited(
                "too many invalid API keys from this address; the limit is "
                f"{self.failures.burst:g} a minute (CHRONOQ_AUTH_FAILURES_PER_MINUTE)",
                wait,
            )

    def failed(self, address: str) -> None:
        """Count a failed authentication from ``address``."""
        self.failures.take(address)


def limits_of(request_app: FastAPI) -> RateLimits:
    limits: RateLimits = request_app.state.rate_limits
    return limits


def install(api: FastAPI, settings: Settings) -> None:
    """Give ``api`` its buckets and the 429 answer (with ``Retry-After``)."""
    api.state.rate_limits = RateLimits.from_settings(settings)
    api.add_exception_handler(RateLimited, answer)
