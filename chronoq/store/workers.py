"""Worker registry: who is alive, what they serve, how busy they are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chronoq.models import WorkerInfo, to_datetime
from chronoq.store.connector import Connector
from chronoq.store.records import Row, dumps, loads


def worker_from_row(row: Row) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        queues=loads(row["queues"]),
        concurrency=row["concurrency"],
        status=row["status"],
        running=row["running"],
        processed=row["processed"],
        started_at=to_datetime(row["started_at"]),
        last_seen_at=to_datetime(row["last_seen_at"]),
        handlers=loads(row["handlers"]),
        child_restarts=row["child_restarts"],
    )


@dataclass(frozen=True, slots=True)
class Served:
    """What the live workers serve: per queue, the handler names some worker has. A queue
    with a worker that did not say (registered before handlers were recorded) serves any."""

    handlers: dict[str, frozenset[str]] = field(default_factory=dict)
    open_queues: frozenset[str] = frozenset()

    def serves(self, queue: str, name: str) -> bool:
        return queue in self.open_queues or name in self.handlers.get(queue, ())

    def warning(self, queue: str, name: str) -> str | None:
        """Why a task ``name`` in ``queue`` may never run, or None when a worker serves it."""
        if self.serves(queue, name):
            return None
        if queue not in self.handlers:
            return (
                f"no live worker serves queue {queue!r}: the task waits until one "
                f"with a handler named {name!r} starts"
            )
        return (
            f"no live worker of queue {queue!r} has a handler named {name!r}: the task "
            "fails without retry when one of them takes it, unless a worker with that "
            "handler starts first"
        )


class WorkerQueries(Connector):
    """Worker registry queries, mixed into :class:`chronoq.store.base.Store`."""

    async def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        concurrency: int,
        now: float,
        handlers: Sequence[str] | None = None,
    ) -> None:
        """Announce a worker; ``handlers`` are the task names it can run."""
        served = None if handlers is None else dumps(sorted(handlers))
        async with self.conn() as c:
            await c.execute(
                "INSERT INTO workers (id, host, pid, queues, concurrency, status, running, "
                "processed, started_at, last_seen_at, handlers) "
                "VALUES ($1, $2, $3, $4, $5, 'alive', 0, 0, $6, $6, $7) "
                "ON CONFLICT (id) DO UPDATE "
                "SET status = 'alive', last_seen_at = $6, handlers = $7",
                worker_id,
                host,
                pid,
                dumps(list(queues)),
                concurrency,
                now,
                served,
            )

    async def worker_heartbeat(
        self,
        worker_id: str,
        running: int,
        processed: int,
        concurrency: int,
        now: float,
        status: str = "alive",
    ) -> None:
        async with self.conn() as c:
            await c.execute(
                "UPDATE workers SET last_seen_at = $2, running = $3, processed = $4, "
                "concurrency = $5, status = $6 WHERE id = $1",
                worker_id,
                now,
                running,
                processed,
                concurrency,
                status,
            )

    async def worker_child_restarts(self, worker_id: str, restarts: int) -> None:
        """How many pool children this worker replaced since it started."""
        async with self.conn() as c:
            await c.execute(
                "UPDATE workers SET child_restarts = $2 WHERE id = $1", worker_id, restarts
            )

    async def mark_dead_workers(self, silent_since: float) -> list[str]:
        """Workers that stopped heartbeating before ``silent_since`` become ``dead``."""
        async with self.conn() as c:
            rows = await c.fetch(
                "UPDATE workers SET status = 'dead' WHERE status = 'alive' "
                "AND last_seen_at < $1 RETURNING id",
                silent_since,
            )
        return [r["id"] for r in rows]

    async def list_workers(self, include_gone: bool = False) -> list[WorkerInfo]:
        where = "" if include_gone else "WHERE status = 'alive' "
        async with self.conn() as c:
            rows = await c.fetch(
                f"SELECT * FROM workers {where}ORDER BY started_at DESC LIMIT 1000"
            )
        return [worker_from_row(r) for r in rows]

    async def served(self, seen_since: float, excluding: str | None = None) -> Served:
        """What the workers alive and heard from since ``seen_since`` serve (all but the
        worker ``excluding``). Reads the ``workers_alive`` index: one row per live worker."""
        async with self.conn() as c:
            rows = await c.fetch(
                "SELECT id, queues, handlers FROM workers WHERE status = 'alive' "
                "AND last_seen_at >= $1",
                seen_since,
            )
        handlers: dict[str, set[str]] = {}
        open_queues: set[str] = set()
        for row in rows:
            if row["id"] == excluding:
                continue
            names = loads(row["handlers"])
            for queue in loads(row["queues"]):
                if names is None:
                    open_queues.add(queue)
                handlers.setdefault(queue, set()).update(names or ())
        return Served({q: frozenset(n) for q, n in handlers.items()}, frozenset(open_queues))


class ServedCache:
    """:meth:`WorkerQueries.served`, asked at most once per ``ttl`` seconds: the API checks
    every submission against it, and a set lookup must be all that costs. Concurrent
    callers share one query; a different store (reopened) is asked afresh."""

    def __init__(
        self, silent_after: float, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.silent_after, self.ttl, self.clock = silent_after, ttl, clock
        self._value: Served | None = None
        self._source: WorkerQueries | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self, store: WorkerQueries) -> Served | None:
        if self._source is store and self.clock() < self._until:
            return self._value
        return None

    async def get(self, store: WorkerQueries) -> Served:
        value = self._fresh(store)
        if value is not None:
            return value
        async with self._lock:
            value = self._fresh(store)
            if value is None:
                value = await store.served(time.time() - self.silent_after)
                self._value, self._source = value, store
                self._until = self.clock() + self.ttl
            return value
