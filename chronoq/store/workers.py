"""Worker registry: who is alive, what they serve, how busy they are."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from chronoq.models import WorkerInfo, to_datetime
from chronoq.store.records import Row, dumps, loads


def worker_from_row(row: Row) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"], host=row["host"], pid=row["pid"], queues=loads(row["queues"]),
        concurrency=row["concurrency"], status=row["status"], running=row["running"],
        processed=row["processed"], started_at=to_datetime(row["started_at"]),
        last_seen_at=to_datetime(row["last_seen_at"]),
        child_restarts=row["child_restarts"],
    )


class WorkerQueries(abc.ABC):
    """Worker registry queries, mixed into :class:`chronoq.store.base.Store`."""

    @abc.abstractmethod
    def conn(self) -> Any: ...

    async def register_worker(self, worker_id: str, host: str, pid: int,
                              queues: Sequence[str], concurrency: int, now: float) -> None:
        async with self.conn() as c:
            await c.execute(
                "INSERT INTO workers (id, host, pid, queues, concurrency, status, running, "
                "processed, started_at, last_seen_at) "
                "VALUES ($1, $2, $3, $4, $5, 'alive', 0, 0, $6, $6) ON CONFLICT (id) DO UPDATE "
                "SET status = 'alive', last_seen_at = $6",
                worker_id, host, pid, dumps(list(queues)), concurrency, now)

    async def worker_heartbeat(self, worker_id: str, running: int, processed: int,
                               concurrency: int, now: float, status: str = "alive") -> None:
        async with self.conn() as c:
            await c.execute(
                "UPDATE workers SET last_seen_at = $2, running = $3, processed = $4, "
                "concurrency = $5, status = $6 WHERE id = $1",
                worker_id, now, running, processed, concurrency, status)

    async def worker_child_restarts(self, worker_id: str, restarts: int) -> None:
        """How many pool children this worker replaced since it started."""
        async with self.conn() as c:
            await c.execute("UPDATE workers SET child_restarts = $2 WHERE id = $1",
                            worker_id, restarts)

    async def mark_dead_workers(self, silent_since: float) -> list[str]:
        """Workers that stopped heartbeating before ``silent_since`` become ``dead``."""
        async with self.conn() as c:
            rows = await c.fetch(
                "UPDATE workers SET status = 'dead' WHERE status = 'alive' "
                "AND last_seen_at < $1 RETURNING id", silent_since)
        return [r["id"] for r in rows]

    async def list_workers(self, include_gone: bool = False) -> list[WorkerInfo]:
        where = "" if include_gone else "WHERE status = 'alive' "
        async with self.conn() as c:
            rows = await c.fetch(f"SELECT * FROM workers {where}ORDER BY started_at DESC "
                                 "LIMIT 1000")
        return [worker_from_row(r) for r in rows]
