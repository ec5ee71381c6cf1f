"""Tasks per queue and status (``GET /v1/queues``, the dashboard overview, the metrics'
queue gauges) at a cost that follows the *active* tasks, not the rows stored.

- **Active statuses** are counted over the partial index that already holds each of them,
  so finished rows are never read: ``queued`` from ``tasks_ready`` (with the oldest
  ``run_at``), ``scheduled`` and ``failed`` from ``tasks_waiting``, ``running`` from
  ``tasks_leases``, ``blocked`` and ``upstream_failed`` (workflow nodes) from
  ``tasks_blocked`` (migration 0024). One statement, a UNION ALL of the four.
- **Finished statuses** come in two parts (migration 0024). ``finished_counts`` holds, per
  namespace, queue and status, the finished tasks whose ``updated_at`` (when they
  finished) is before ``finished_mark.upto``; the tasks finished since are counted when
  read, one range of ``tasks_finished`` per (status, queue) (as :mod:`.history` does).
  Nothing on the hot path writes either table: :func:`advance` moves the mark forward and
  adds what it passed, off the hot path, once :data:`ADVANCE_ROWS` rows piled up past
  it (a reader that saw that many does it after answering; the scheduler leader looks
  every :data:`ADVANCE_SECONDS`). Rows leaving the counted part are subtracted by two
  triggers that fire only for them (a DELETE; a finished task retried).

The mark stays :data:`LAG` seconds behind the clock: a completion recorded with an
``updated_at`` more than that in the past when it commits (a worker that kept its result
through a longer outage, or a host whose clock is that far behind) is counted by the
history charts but not in these totals. On a small database the mark never moves (fewer
than :data:`ADVANCE_ROWS` finished rows) and every count is read from the index.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from chronoq import lifecycle
from chronoq.lifecycle import TERMINAL, Status
from chronoq.models import QueueStats, to_datetime
from chronoq.store.records import Conn, Row

if TYPE_CHECKING:
    from chronoq.store.base import Store

#: finished rows past the mark that make a reader (or the leader) move it
ADVANCE_ROWS = 10_000
#: how far behind the clock the mark stays (see the module docstring)
LAG = 30.0
#: how often the scheduler leader looks whether the mark should move
ADVANCE_SECONDS = 30.0
#: a bound above any ``updated_at`` (epoch seconds): the tail's range is open-ended
_FOREVER = 1e11
#: (status, queue) ranges per statement, which bounds its parameter count
_PAIRS_PER_QUERY = 100

_STATUSES: tuple[Status, ...] = tuple(sorted(TERMINAL))
#: workflow statuses, spelled as the ``tasks_blocked`` index's predicate
_BLOCKED = f"status IN ('{Status.BLOCKED.value}', '{Status.UPSTREAM_FAILED.value}')"


def _active_sql(namespace: str | None) -> tuple[str, list[Any]]:
    """(queue, status, n, oldest) of every active status, each over its own partial index;
    the predicates are those of the indexes, word for word (SQLite matches them so)."""
    extra, args = (" AND namespace = $1", [namespace]) if namespace is not None else ("", [])
    queued = lifecycle.CLAIM.where()  # tasks_ready
    waiting = lifecycle.PROMOTE.where()  # tasks_waiting
    running = lifecycle.FINISH.where()  # tasks_leases
    parts = [
        f"SELECT queue, '{Status.QUEUED.value}' AS status, count(*) AS n, min(run_at) AS oldest "
        f"FROM tasks WHERE {queued}{extra} GROUP BY queue",
        f"SELECT queue, status, count(*) AS n, NULL AS oldest FROM tasks "
        f"WHERE {waiting}{extra} GROUP BY queue, status",
        f"SELECT queue, '{Status.RUNNING.value}' AS status, count(*) AS n, NULL AS oldest "
        f"FROM tasks WHERE {running}{extra} GROUP BY queue",
        f"SELECT queue, status, count(*) AS n, NULL AS oldest FROM tasks "
        f"WHERE {_BLOCKED}{extra} GROUP BY queue, status",
    ]
    return " UNION ALL ".join(parts), args


async def _queues(c: Conn, status: Status) -> list[str]:
    """The queues holding finished tasks of ``status``: a loose index scan of
    ``tasks_finished`` (one probe per queue)."""
    finished = lifecycle.PURGE.where()
    rows = await c.fetch(
        "WITH RECURSIVE q (queue) AS ("
        f"SELECT (SELECT min(queue) FROM tasks WHERE {finished} AND status = $1) UNION ALL "
        f"SELECT (SELECT min(queue) FROM tasks WHERE {finished} AND status = $1 "
        "AND queue > q.queue) FROM q WHERE q.queue IS NOT NULL) "
        "SELECT queue FROM q WHERE queue IS NOT NULL",
        status.value,
    )
    return [r["queue"] for r in rows]


async def _since(
    c: Conn, start: float, end: float, namespace: str | None, by_namespace: bool
) -> list[Row]:
    """Finished tasks per (status, queue[, namespace]) with ``start <= updated_at < end``:
    one ``tasks_finished`` range per (status, queue)."""
    pairs = [(s, q) for s in _STATUSES for q in await _queues(c, s)]
    found: list[Row] = []
    keys = "status, queue, namespace" if by_namespace else "status, queue"
    for first in range(0, len(pairs), _PAIRS_PER_QUERY):
        args: list[Any] = [start, end]
        extra = ""
        if namespace is not None:
            args.append(namespace)
            extra = f" AND namespace = ${len(args)}"
        parts = []
        for status, queue in pairs[first : first + _PAIRS_PER_QUERY]:
            args += [status.value, queue]
            parts.append(
                f"SELECT {keys}, count(*) AS n FROM tasks WHERE {lifecycle.PURGE.where()} "
                f"AND status = ${len(args) - 1} AND queue = ${len(args)} "
                f"AND updated_at >= $1 AND updated_at < $2{extra} GROUP BY {keys}"
            )
        found += await c.fetch(" UNION ALL ".join(parts), *args)
    return found


async def _mark(c: Conn) -> float:
    rows = await c.fetch("SELECT upto FROM finished_mark WHERE id = 1")
    return float(rows[0]["upto"]) if rows else 0.0


async def queue_stats(store: Store, now: float, namespace: str | None = None) -> list[QueueStats]:
    """Counts per queue and status (of ``namespace``, when given), paused queues included."""
    where, args = ("WHERE namespace = $1 ", [namespace]) if namespace is not None else ("", [])
    active_sql, active_args = _active_sql(namespace)
    async with store.conn() as c:
        active = await c.fetch(active_sql, *active_args)
        upto = await _mark(c)
        rolled = await c.fetch(
            f"SELECT queue, status, sum(n) AS n FROM finished_counts {where}GROUP BY queue, status",
            *args,
        )
        tail = await _since(c, upto, _FOREVER, namespace, by_namespace=False)
    stats: dict[str, QueueStats] = {}

    def entry(queue: str) -> QueueStats:
        return stats.setdefault(
            queue, QueueStats(queue=queue, counts={s: 0 for s in Status}, depth=0)
        )

    for row in active:
        if not row["n"]:
            continue
        status = Status(row["status"])
        stat = entry(row["queue"])
        stat.counts[status] += int(row["n"])
        if status is Status.QUEUED:
            stat.depth = int(row["n"])
            stat.oldest_queued_age_seconds = max(0.0, now - float(row["oldest"]))
    for row in [*rolled, *tail]:
        if row["n"]:
            entry(row["queue"]).counts[Status(row["status"])] += int(row["n"])
    for queue, pause in (await store.paused_queues()).items():  # also when it holds none
        stat = entry(queue)
        stat.paused, stat.paused_at = True, to_datetime(pause.paused_at)
        stat.paused_by = pause.paused_by
    if sum(int(r["n"]) for r in tail) >= ADVANCE_ROWS:
        await advance(store, time.time())
    return [stats[queue] for queue in sorted(stats)]


async def advance(store: Store, now: float, min_rows: int = ADVANCE_ROWS) -> int:
    """Move the mark to ``now - LAG`` and add the finished tasks it passes to
    ``finished_counts``, if at least ``min_rows`` did finish in between; returns how many
    were added (0: left as it was). Another caller moving it meanwhile is left to it."""
    target = min(now, time.time()) - LAG
    lock = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgresql" else ""
    async with store.tx() as c:
        rows = await c.fetch(f"SELECT upto FROM finished_mark WHERE id = 1{lock}")
        if not rows or float(rows[0]["upto"]) >= target:
            return 0
        upto = float(rows[0]["upto"])
        passed = await _since(c, upto, target, None, by_namespace=True)
        total = sum(int(r["n"]) for r in passed)
        if total < min_rows:
            return 0
        await c.executemany(
            "INSERT INTO finished_counts (namespace, queue, status, n) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (namespace, queue, status) DO UPDATE "
            "SET n = finished_counts.n + excluded.n",
            [(r["namespace"], r["queue"], r["status"], int(r["n"])) for r in passed],
        )
        await c.execute("UPDATE finished_mark SET upto = $1 WHERE id = 1", target)
    return total
