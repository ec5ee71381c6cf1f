"""Worker registry: who is alive, what they serve, how busy they are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chronoq.models import WorkerInfo, to_datetime
from chronoq.store.connector import Repository
from chronoq.store.records import Row, dumps, loads


def worker_from_row(row: Row) -> WorkerInfo:
    columns = set(row.keys())
    detail = loads(row["detail"]) if "detail" in columns else None
    detail = detail if isinstance(detail, dict) else {}
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
        control=row["control"] if "control" in columns else None,
        stopping=bool(detail.get("stopping", False)),
        tasks=detail.get("tasks", []),
        children=detail.get("children", []),
    )


#: what the API may ask of a worker (column ``workers.control``, migration 0022)
CONTROLS = ("drain", "stop")


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


class WorkerRegistry(Repository):
    """The workers' rows (``store.workers``)."""

    async def register(
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
        async with self.db.conn() as c:
            await c.execute(
                "INSERT INTO workers (id, host, pid, queues, concurrency, status, running, "
                "processed, started_at, last_seen_at, handlers) "
                "VALUES ($1, $2, $3, $4, $5, 'alive', 0, 0, $6, $6, $7) "
                "ON CONFLICT (id) DO UPDATE "
                "SET status = 'alive', last_seen_at = $6, handlers = $7, control = NULL",
                worker_id,
                host,
                pid,
                dumps(list(queues)),
                concurrency,
                now,
                served,
            )

    async def heartbeat(
        self,
        worker_id: str,
        running: int,
        processed: int,
        concurrency: int,
        now: float,
        status: str = "alive",
        detail: dict[str, Any] | None = None,
    ) -> str | None:
        """Refresh the worker's row (``detail``: its children and tasks, kept when None);
        returns what the API asked of it since (``drain``, ``stop``), or None."""
        async with self.db.conn() as c:
            rows = await c.fetch(
                "UPDATE workers SET last_seen_at = $2, running = $3, processed = $4, "
                "concurrency = $5, status = $6, detail = COALESCE($7, detail) "
                "WHERE id = $1 RETURNING control",
                worker_id,
                now,
                running,
                processed,
                concurrency,
                status,
                None if detail is None else dumps(detail),
            )
        return rows[0]["control"] if rows else None

    async def control(self, worker_id: str, control: str) -> WorkerInfo | None:
        """Ask worker ``worker_id`` to ``drain`` or ``stop`` (it reads it with its next
        heartbeat); a ``stop`` overrides a ``drain``, not the other way round. None when
        no such worker exists; a worker that is not alive is returned unchanged."""
        if control not in CONTROLS:
            raise ValueError(f"unknown worker control {control!r}")
        async with self.db.conn() as c:
            await c.execute(
                "UPDATE workers SET control = $2 WHERE id = $1 AND status = 'alive' "
                "AND (control IS NULL OR $2 = 'stop')",
                worker_id,
                control,
            )
            rows = await c.fetch("SELECT * FROM workers WHERE id = $1", worker_id)
        return worker_from_row(rows[0]) if rows else None

    async def get(self, worker_id: str) -> WorkerInfo | None:
        async with self.db.conn() as c:
            rows = await c.fetch("SELECT * FROM workers WHERE id = $1", worker_id)
        return worker_from_row(rows[0]) if rows else None

    async def child_restarts(self, worker_id: str, restarts: int) -> None:
        """How many pool children this worker replaced since it started."""
        async with self.db.conn() as c:
            await c.execute(
                "UPDATE workers SET child_restarts = $2 WHERE id = $1", worker_id, restarts
            )

    async def mark_dead(self, silent_since: float) -> list[str]:
        """Workers that stopped heartbeating before ``silent_since`` become ``dead``."""
        async with self.db.conn() as c:
            rows = await c.fetch(
                "UPDATE workers SET status = 'dead' WHERE status = 'alive' "
                "AND last_seen_at < $1 RETURNING id",
                silent_since,
            )
        return [r["id"] for r in rows]

    async def all(self, include_gone: bool = False) -> list[WorkerInfo]:
        where = "" if include_gone else "WHERE status = 'alive' "
        async with self.db.conn() as c:
            rows = await c.fetch(
                f"SELECT * FROM workers {where}ORDER BY started_at DESC LIMIT 1000"
            )
        return [worker_from_row(r) for r in rows]

    async def served(self, seen_since: float, excluding: str | None = None) -> Served:
        """What the workers alive and heard from since ``seen_since`` serve (all but the
        worker ``excluding``). Reads the ``workers_alive`` index: one row per live worker."""
        async with self.db.conn() as c:
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
    """:meth:`WorkerRegistry.served`, asked at most once per ``ttl`` seconds: the API checks
    every submission against it, and a set lookup must be all that costs. Concurrent
    callers share one query; a different store (reopened) is asked afresh."""

    def __init__(
        self, silent_after: float, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.silent_after, self.ttl, self.clock = silent_after, ttl, clock
        self._value: Served | None = None
        self._source: WorkerRegistry | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self, store: WorkerRegistry) -> Served | None:
        if self._source is store and self.clock() < self._until:
            return self._value
        return None

    async def get(self, store: WorkerRegistry) -> Served:
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
