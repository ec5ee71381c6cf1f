"""Paused queues: a queue whose tasks no worker claims until it is resumed.

A pause is a row in ``queue_pauses`` (migration 0015). It is enforced where work is taken,
in the claiming statement itself (:func:`not_paused`), so no worker can claim between a
check and a claim; workers stay up and keep serving their other queues. Pauses are global:
queues are shared between namespaces, and a worker serves a whole queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chronoq.store.connector import Repository


def not_paused(queue: str) -> str:
    """SQL condition: the queue named by the expression ``queue`` (a column such as
    ``tasks.queue``, or a parameter, which PostgreSQL then checks once per statement) is
    not paused. One primary-key probe; nothing to read when no queue is paused."""
    return f"NOT EXISTS (SELECT 1 FROM queue_pauses WHERE queue_pauses.queue = {queue})"


@dataclass(frozen=True, slots=True)
class QueuePause:
    """Who paused a queue, and when (a Unix time)."""

    queue: str
    paused_at: float
    paused_by: str | None


class Pauses(Repository):
    """Paused queues (``store.pauses``)."""

    async def pause(self, queue: str, now: float, by: str | None = None) -> QueuePause:
        """Pause ``queue``; pausing a paused queue keeps the first pause (who and when)."""
        async with self.db.conn() as c:
            await c.execute(
                "INSERT INTO queue_pauses (queue, paused_at, paused_by) "
                "VALUES ($1, $2, $3) ON CONFLICT (queue) DO NOTHING",
                queue,
                now,
                by,
            )
            rows = await c.fetch("SELECT * FROM queue_pauses WHERE queue = $1", queue)
        return _pause(rows[0])

    async def resume(self, queue: str) -> bool:
        """Resume ``queue`` and wake its workers (here in-process; on PostgreSQL the
        migration's trigger notifies every process). False if it was not paused."""
        async with self.db.conn() as c:
            rows = await c.fetch("DELETE FROM queue_pauses WHERE queue = $1 RETURNING queue", queue)
        if rows:
            self.db.announce.resumed(queue)
        return bool(rows)

    async def current(self) -> dict[str, QueuePause]:
        """Every paused queue, by name."""
        async with self.db.conn() as c:
            rows = await c.fetch("SELECT * FROM queue_pauses ORDER BY queue")
        return {r["queue"]: _pause(r) for r in rows}


def _pause(row: Any) -> QueuePause:
    return QueuePause(row["queue"], float(row["paused_at"]), row["paused_by"])
