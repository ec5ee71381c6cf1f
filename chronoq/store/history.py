"""Finished tasks counted per time bucket: the dashboard's history charts and
``GET /v1/history``.

A task's ``updated_at`` is when it finished once it is succeeded, dead or cancelled, so
"how many finished per minute" is a GROUP BY over a range of the ``tasks_finished``
partial index (migration 0014, ``(status, queue, updated_at, id)``). PostgreSQL 15 cannot
skip over the ``queue`` column, so the query names each (status, queue) pair: the queues
come from a loose index scan (:func:`chronoq.store.retention.finished_queues`, one probe
per queue) and each pair is one index range, read only as far as the window reaches. The
cost follows the rows inside the window, never the rows stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chronoq.states import TERMINAL, Status
from chronoq.store.base import Store
from chronoq.store.retention import FINISHED, finished_queues

#: the statuses a history counts: the finished ones, in a fixed order
STATUSES: tuple[Status, ...] = tuple(sorted(TERMINAL))

#: (status, queue) pairs per statement, which bounds its parameter count
_PAIRS_PER_QUERY = 100

#: the bucket a row falls in, counted from the window's start ($1) in buckets of $3 seconds
_BUCKET = {
    "sqlite": "CAST((updated_at - $1) / $3 AS INTEGER)",  # rows are >= $1: truncation floors
    "postgresql": "CAST(floor((updated_at - $1) / $3) AS INTEGER)",
}


@dataclass(frozen=True, slots=True)
class Window:
    """Tasks that finished in ``[start, start + bucket * buckets)`` (epoch seconds),
    counted per ``bucket`` seconds; ``queue``, ``name`` and ``namespace`` narrow it."""

    start: float
    bucket: float
    buckets: int
    queue: str | None = None
    name: str | None = None
    namespace: str | None = None

    @property
    def end(self) -> float:
        return self.start + self.bucket * self.buckets


@dataclass(frozen=True, slots=True)
class BucketCount:
    """``count`` tasks of ``queue`` became ``status`` in bucket number ``bucket``."""

    status: Status
    queue: str
    bucket: int
    count: int


async def counts(
    store: Store, window: Window, statuses: Sequence[Status] = STATUSES
) -> list[BucketCount]:
    """Every non-zero (status, queue, bucket) count of ``window``."""
    pairs: list[tuple[Status, str]] = []
    for status in statuses:
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a finished status")
        queues = (
            [window.queue] if window.queue is not None else await finished_queues(store, status)
        )
        pairs += [(status, q) for q in queues]
    found: list[BucketCount] = []
    for first in range(0, len(pairs), _PAIRS_PER_QUERY):
        sql, args = _statement(store.dialect, window, pairs[first : first + _PAIRS_PER_QUERY])
        async with store.conn() as c:
            rows = await c.fetch(sql, *args)
        found += [
            BucketCount(Status(r["status"]), r["queue"], int(r["b"]), int(r["n"]))
            for r in rows
            if 0 <= int(r["b"]) < window.buckets  # float edges: never outside the window
        ]
    return found


def _statement(
    dialect: str, window: Window, pairs: Sequence[tuple[Status, str]]
) -> tuple[str, list[Any]]:
    """One UNION ALL of per-(status, queue) index ranges, grouped by bucket."""
    args: list[Any] = [window.start, window.end, window.bucket]
    extra = ""
    for column, value in (("name", window.name), ("namespace", window.namespace)):
        if value is not None:
            args.append(value)
            extra += f" AND {column} = ${len(args)}"
    parts = []
    for status, queue in pairs:
        args += [status.value, queue]
        parts.append(
            f"SELECT status, queue, {_BUCKET[dialect]} AS b, count(*) AS n FROM tasks "
            f"WHERE status IN ({FINISHED}) AND status = ${len(args) - 1} "
            f"AND queue = ${len(args)} AND updated_at >= $1 AND updated_at < $2{extra} "
            "GROUP BY status, queue, b"
        )
    return " UNION ALL ".join(parts), args
