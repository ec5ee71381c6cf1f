"""API keys: created with a secret shown once, stored as a SHA-256 hash, revocable.

Keys look like ``cq_<id>_<secret>``; the id is public (listing, revoking), the secret is
32 random bytes, so a fast hash is as safe as a slow one and keeps authentication cheap.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from chronoq.store.connector import Repository
from chronoq.store.records import Row, dumps, loads

SCOPES = ("read", "write", "admin")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    namespace: str | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: Row) -> ApiKey:
        return cls(
            row["id"],
            row["name"],
            frozenset(loads(row["scopes"])),
            row["namespace"],
            row["created_at"],
            row["last_used_at"],
            row["revoked_at"],
        )

    def allows(self, scope: str) -> bool:
        """``admin`` implies ``write``, which implies ``read``."""
        rank = {s: i for i, s in enumerate(SCOPES)}
        return any(rank[s] >= rank[scope] for s in self.scopes)


class Keys(Repository):
    """API keys (``store.keys``)."""

    async def create(
        self, name: str, scopes: list[str], namespace: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key; returns it with its secret, which is not stored and not shown again."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {scopes}")
        key_id = secrets.token_hex(4)
        secret = f"cq_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        async with self.db.conn() as c:
            await c.execute(
                "INSERT INTO api_keys (id, name, hash, scopes, namespace, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                key_id,
                name,
                hash_key(secret),
                dumps(sorted(scopes)),
                namespace,
                now,
            )
        return ApiKey(key_id, name, frozenset(scopes), namespace, now, None, None), secret

    async def all(self) -> list[ApiKey]:
        async with self.db.conn() as c:
            rows = await c.fetch("SELECT * FROM api_keys ORDER BY created_at")
        return [ApiKey.from_row(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        async with self.db.conn() as c:
            rows = await c.fetch(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 "
                "AND revoked_at IS NULL RETURNING id",
                key_id,
                time.time(),
            )
        return bool(rows)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The key with this secret, unless unknown or revoked."""
        async with self.db.conn() as c:
            rows = await c.fetch(
                "UPDATE api_keys SET last_used_at = $2 WHERE hash = $1 "
                "AND revoked_at IS NULL RETURNING *",
                hash_key(secret),
                time.time(),
            )
        return ApiKey.from_row(rows[0]) if rows else None
