"""Leases with fencing tokens: the leader's, and one per schedule partition
(:mod:`chronoq.partitions`); a stale holder's writes are fenced off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chronoq.store.connector import Repository
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


class Leases(Repository):
    """Leases and their fences (``store.leases``)."""

    async def try_take(self, name: str, holder: str, now: float, ttl: float) -> Fence | None:
        """Take or renew lease ``name`` for ``ttl`` seconds. Returns the fence when held;
        None while another holder's lease is still valid. Taking over bumps the token."""
        async with self.db.conn() as c:
            return await self._take(c, name, holder, now, ttl)

    async def try_take_many(
        self, names: Sequence[str], holder: str, now: float, ttl: float
    ) -> list[Fence]:
        """:meth:`try_take` for each of ``names``, in one transaction (in name order, so two
        schedulers' transactions never wait on each other in a cycle); the fences held."""
        if not names:
            return []
        async with self.db.tx() as c:
            found = [await self._take(c, name, holder, now, ttl) for name in sorted(names)]
        return [fence for fence in found if fence is not None]

    async def _take(self, c: Conn, name: str, holder: str, now: float, ttl: float) -> Fence | None:
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

    async def release_many(self, fences: Sequence[Fence]) -> None:
        """:meth:`release` for each of ``fences``, in one transaction."""
        if not fences:
            return
        async with self.db.tx() as c:
            await c.executemany(
                "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
                sorted((f.name, f.holder, f.token) for f in fences),
            )

    async def like(self, prefix: str) -> list[LeaseInfo]:
        """Every lease whose name starts with ``prefix`` (a few dozen rows at most)."""
        async with self.db.conn() as c:
            rows = await c.fetch(
                "SELECT * FROM leases WHERE name LIKE $1 ESCAPE '\\'",
                prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
            )
        return [_info(r) for r in rows]

    async def forget(self, names: Sequence[str], before: float) -> None:
        """Delete the leases of ``names`` that expired before ``before`` (gone holders)."""
        async with self.db.conn() as c:
            await c.execute(
                f"DELETE FROM leases WHERE name {self.db.in_list('$1')} AND expires_at < $2",
                self.db.list_param(names),
                before,
            )

    async def release(self, fence: Fence) -> None:
        """Give the lease up at once (graceful shutdown), so a follower takes over now."""
        async with self.db.conn() as c:
            await c.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
                fence.name,
                fence.holder,
                fence.token,
            )

    async def get(self, name: str) -> LeaseInfo | None:
        async with self.db.conn() as c:
            rows = await c.fetch("SELECT * FROM leases WHERE name = $1", name)
        return _info(rows[0]) if rows else None

    async def check_fence(self, c: Conn, fence: Fence | None, now: float) -> None:
        """Inside a write transaction: raise :class:`NotLeader` unless ``fence`` is the
        current, unexpired lease. On PostgreSQL the lease row stays locked until commit, so
        no takeover can slip in between this check and the write."""
        if fence is None:
            return
        rows = await c.fetch(
            "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3 "
            f"AND expires_at >= $4{self.db.lock_row}",
            fence.name,
            fence.holder,
            fence.token,
            now,
        )
        if not rows:
            raise NotLeader(f"{fence.holder} lost lease {fence.name!r} (token {fence.token})")

    async def check_fences(self, c: Conn, fences: Sequence[Fence], now: float) -> None:
        """:meth:`check_fence` for several leases of one holder, in one query."""
        if not fences:
            return
        rows = await c.fetch(
            f"SELECT name, token FROM leases WHERE name {self.db.in_list('$1')} AND holder = $2 "
            f"AND expires_at >= $3{self.db.lock_row}",
            self.db.list_param(f.name for f in fences),
            fences[0].holder,
            now,
        )
        held = {(r["name"], int(r["token"])) for r in rows}
        lost = [f.name for f in fences if (f.name, f.token) not in held]
        if lost:
            raise NotLeader(f"{fences[0].holder} lost leases {', '.join(lost)}")


def _info(r: Any) -> LeaseInfo:
    return LeaseInfo(r["name"], r["holder"], int(r["token"]), float(r["expires_at"]))
