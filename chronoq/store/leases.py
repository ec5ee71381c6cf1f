"""Leadership leases with fencing tokens (one scheduler leads; stale leaders are fenced off)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from chronoq.store.records import Conn


class NotLeader(Exception):
    """This process no longer holds the lease its write depends on."""


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of leadership that a write carries: lease name, holder and token."""

    name: str
    holder: str
    token: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    name: str
    holder: str
    token: int
    expires_at: float


class LeaseQueries(abc.ABC):
    """Lease queries, mixed into :class:`chronoq.store.base.Store`."""

    lock_row: str

    @abc.abstractmethod
    def conn(self) -> Any: ...

    async def try_lease(self, name: str, holder: str, now: float, ttl: float) -> Fence | None:
        """Take or renew lease ``name`` for ``ttl`` seconds. Returns the fence when held;
        None while another holder's lease is still valid. Taking over bumps the token."""
        async with self.conn() as c:
            rows = await c.fetch(
                "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "token = CASE WHEN leases.holder = excluded.holder THEN leases.token "
                "ELSE leases.token + 1 END, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at < $4 "
                "RETURNING token",
                name,
                holder,
                now + ttl,
                now,
            )
        return Fence(name, holder, int(rows[0]["token"])) if rows else None

    async def release_lease(self, fence: Fence) -> None:
        """Give the lease up at once (graceful shutdown), so a follower takes over now."""
        async with self.conn() as c:
            await c.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
                fence.name,
                fence.holder,
                fence.token,
            )

    async def get_lease(self, name: str) -> LeaseInfo | None:
        async with self.conn() as c:
            rows = await c.fetch("SELECT * FROM leases WHERE name = $1", name)
        if not rows:
            return None
        r = rows[0]
        return LeaseInfo(r["name"], r["holder"], int(r["token"]), float(r["expires_at"]))

    async def check_fence(self, c: Conn, fence: Fence | None, now: float) -> None:
        """Inside a write transaction: raise :class:`NotLeader` unless ``fence`` is the
        current, unexpired lease. On PostgreSQL the lease row stays locked until commit, so
        no takeover can slip in between this check and the write."""
        if fence is None:
            return
        rows = await c.fetch(
            "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3 "
            f"AND expires_at >= $4{self.lock_row}",
            fence.name,
            fence.holder,
            fence.token,
            now,
        )
        if not rows:
            raise NotLeader(f"{fence.holder} lost lease {fence.name!r} (token {fence.token})")
