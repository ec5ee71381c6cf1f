"""Partitioned firing: N schedulers share the schedules, one lease per partition.

Every schedule belongs to one of :data:`PARTITIONS` partitions (:func:`partition_of`, the
``schedules.part`` column of migration 0017). Partition ``p`` is fired only by the holder
of lease ``schedules:<p>``, taken, renewed and fenced like the leader's ``scheduler``
lease (:mod:`chronoq.store.leases`), so each partition fails over on its own within the
lease TTL and a stale owner's writes are refused. Each scheduler also renews a membership
lease ``schedulers:<its id>``; from the live members it aims for ``ceil(P / N)``
partitions: it takes free (expired or released) ones while it holds fewer, and releases
its highest-numbered ones while it holds more, so a new scheduler gets work within two
renewals. The ``(schedule_id, slot)`` unique index stays the last line of defence.
"""

from __future__ import annotations

import hashlib
import math

from chronoq.store.interfaces import SchedulerStore
from chronoq.store.leases import Fence, LeaseInfo

#: the number of partitions (migration 0017 computes ``part`` modulo this)
PARTITIONS = 64
#: lease name prefixes: a partition's owner, a live scheduler
PARTITION, MEMBER = "schedules:", "schedulers:"
#: membership rows of schedulers gone this long are deleted (they are only counted live)
FORGET_SECONDS = 60.0
_HEX = "0123456789abcdef"


def partition_of(schedule_id: str) -> int:
    """The partition of a schedule: its id's two last hex digits (random bits), as the
    generated column of migration 0017 computes it."""
    low = schedule_id.lower()
    return (16 * (_HEX.find(low[-2]) + 1) + _HEX.find(low[-1]) + 1) % PARTITIONS


def lease_name(partition: int) -> str:
    return f"{PARTITION}{partition}"


class Ownership:
    """The partitions one scheduler holds, as fences; :meth:`renew` rebalances them."""

    def __init__(self, holder: str, ttl: float) -> None:
        self.holder, self.ttl = holder, ttl
        self.fences: dict[int, Fence] = {}
        #: where this scheduler starts looking for free partitions (spreads the takers)
        self._start = int.from_bytes(hashlib.md5(holder.encode()).digest()[:4]) % PARTITIONS

    @property
    def partitions(self) -> list[int]:
        return sorted(self.fences)

    @property
    def all(self) -> bool:
        return len(self.fences) == PARTITIONS

    async def renew(self, store: SchedulerStore, now: float) -> None:
        """Renew the membership and the partitions kept; take or release toward the share."""
        await store.leases.try_take(MEMBER + self.holder, self.holder, now, self.ttl)
        rows = await store.leases.like("schedule")
        members = {self.holder}
        stale: list[str] = []
        mine: dict[int, LeaseInfo] = {}
        taken: set[int] = set()
        for r in rows:
            if r.name.startswith(MEMBER):
                if r.expires_at >= now:
                    members.add(r.holder)
                elif r.expires_at < now - FORGET_SECONDS:
                    stale.append(r.name)
            elif r.name.startswith(PARTITION):
                p = int(r.name[len(PARTITION) :])
                if r.holder == self.holder:
                    mine[p] = r
                elif r.expires_at >= now:
                    taken.add(p)
        share = math.ceil(PARTITIONS / len(members))
        keep = sorted(mine)[:share]
        drop = [Fence(r.name, r.holder, r.token) for p, r in mine.items() if p not in keep]
        free = sorted(
            (p for p in range(PARTITIONS) if p not in mine and p not in taken),
            key=lambda p: (p - self._start) % PARTITIONS,
        )
        ask = keep + free[: share - len(keep)]
        if drop:  # between rounds: nothing of ours fires while they are handed back
            await store.leases.release_many(drop)
        fences = await store.leases.try_take_many(
            [lease_name(p) for p in ask], self.holder, now, self.ttl
        )
        self.fences = {int(f.name[len(PARTITION) :]): f for f in fences}
        if stale:
            await store.leases.forget(stale, now - FORGET_SECONDS)

    async def release(self, store: SchedulerStore) -> None:
        """Hand every partition and the membership back at once (graceful shutdown)."""
        fences = list(self.fences.values())
        self.fences = {}
        await store.leases.release_many(fences)
        await store.leases.forget([MEMBER + self.holder], float("inf"))
