"""Tasks per queue and status (``GET /v1/queues``, the dashboard overview, the metrics'
queue gauges) at a cost that follows the *active* tasks, not the rows stored.

- **Active statuses** are counted over the partial index that already holds each of them,
  so finished rows are never read: ``queued`` from ``tasks_ready`` and ``tasks_limited``
  (with the oldest ``run_at``), ``scheduled`` and ``failed`` from ``tasks_waiting``,
  ``running`` from ``tasks_leases``, ``blocked`` and ``upstream_failed`` (workflow nodes) from
  ``tasks_blocked`` (migration 0024). One statement, a UNION ALL of the five.
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

import asyncio
import json
import logging
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from chronoq import lifecycle
from chronoq.lifecycle import TERMINAL, Status
from chronoq.models import QueueStats, to_datetime
from chronoq.store.records import Conn, Row

if TYPE_CHECKING:
    from chronoq.store.base import Store

#: finished rows past the mark that make a reader (or the leader) move it
ADVANCE_ROWS = 2_000
#: how far behind the clock the mark stays (see the module docstring)
LAG = 30.0
#: how often the scheduler leader looks whether the mark should move
ADVANCE_SECONDS = 30.0
#: ``finished_stats`` bucket sizes (seconds; each divides the next) and how long each is kept
TIERS = (10, 300, 900, 3600)
KEPT = (2 * 86400.0, 8 * 86400.0, 32 * 86400.0, 32 * 86400.0)
#: rows one move of the mark reads at most (in one transaction)
PIECE_ROWS = 50_000
#: a bound above any ``updated_at`` (epoch seconds): the tail's range is open-ended
_FOREVER = 1e11
#: (status, queue) ranges per statement, which bounds its parameter count
_PAIRS_PER_QUERY = 100

log = logging.getLogger("chronoq.counts")
_jobs: weakref.WeakKeyDictionary[Store, asyncio.Task[None]] = weakref.WeakKeyDictionary()

_STATUSES: tuple[Status, ...] = tuple(sorted(TERMINAL))
_FINISHED = {s.value for s in TERMINAL}
#: workflow statuses, spelled as the ``tasks_blocked`` index's predicate
_BLOCKED = f"status IN ('{Status.BLOCKED.value}', '{Status.UPSTREAM_FAILED.value}')"


def _active_sql(namespace: str | None) -> tuple[str, list[Any]]:
    """(queue, status, n, oldest) of every active status, each over its own partial index;
    the predicates are those of the indexes, word for word (SQLite matches them so)."""
    extra, args = (" AND namespace = $1", [namespace]) if namespace is not None else ("", [])
    queued = lifecycle.CLAIM.where()
    waiting = lifecycle.PROMOTE.where()  # tasks_waiting
    running = lifecycle.FINISH.where()  # tasks_leases
    parts = [
        # tasks_ready and tasks_limited (0021): each index's predicate, so both are read
        # alone (``status = 'queued'`` by itself matches neither, and the planner walked
        # tasks_by_status and the table: 10,000 heap fetches for 10,000 queued tasks)
        f"SELECT queue, '{Status.QUEUED.value}' AS status, count(*) AS n, "
        f"min(run_at) AS oldest, 0 AS tail FROM tasks WHERE {queued} "
        f"AND concurrency_key {keyed}{extra} GROUP BY queue"
        for keyed in ("IS NULL", "IS NOT NULL")
    ] + [
        f"SELECT queue, status, count(*) AS n, NULL AS oldest, 0 AS tail FROM tasks "
        f"WHERE {waiting}{extra} GROUP BY queue, status",
        f"SELECT queue, '{Status.RUNNING.value}' AS status, count(*) AS n, NULL AS oldest, "
        "0 AS tail "
        f"FROM tasks WHERE {running}{extra} GROUP BY queue",
        f"SELECT queue, status, count(*) AS n, NULL AS oldest, 0 AS tail FROM tasks "
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


async def mark(store: Store) -> float:
    """Where the mark stands: tasks that finished before it are in ``finished_stats``."""
    async with store.conn() as c:
        return await _mark(c)


async def _mark(c: Conn) -> float:
    rows = await c.fetch("SELECT upto FROM finished_mark WHERE id = 1")
    return float(rows[0]["upto"]) if rows else 0.0


def _finished_sql(namespace: str | None, first: int) -> tuple[str, list[Any]]:
    """(queue, status, n, oldest) of the finished tasks: the rolled-up counts, and the rows
    past the mark counted per (status, queue), the queues found by a loose index scan of
    ``tasks_finished`` (one probe per queue) in the same statement."""
    finished = lifecycle.PURGE.where()
    args: list[Any] = [s.value for s in _STATUSES]
    n = first + len(args)
    ns_rolled = ns_tail = ""
    if namespace is not None:
        args.append(namespace)
        ns_rolled = f"WHERE namespace = ${n} "
        ns_tail = f" AND namespace = ${n}"
    statuses = " UNION ALL ".join(
        f"SELECT CAST(${first + i} AS TEXT) AS status" for i in range(len(_STATUSES))
    )
    sql = (
        f"SELECT queue, status, sum(n) AS n, NULL AS oldest, 0 AS tail FROM finished_counts "
        f"{ns_rolled}"
        "GROUP BY queue, status UNION ALL "
        f"SELECT queue, status, (SELECT count(*) FROM tasks t WHERE {finished} "
        "AND t.status = q.status AND t.queue = q.queue AND t.updated_at >= "
        f"(SELECT upto FROM finished_mark WHERE id = 1){ns_tail}) AS n, "
        "NULL AS oldest, 1 AS tail "
        "FROM (WITH RECURSIVE found (status, queue) AS ("
        f"SELECT s.status, (SELECT min(queue) FROM tasks WHERE {finished} "
        f"AND status = s.status) FROM ({statuses}) s UNION ALL "
        f"SELECT found.status, (SELECT min(queue) FROM tasks WHERE {finished} "
        "AND status = found.status AND queue > found.queue) FROM found "
        "WHERE found.queue IS NOT NULL) "
        "SELECT status, queue FROM found WHERE queue IS NOT NULL) q"
    )
    return sql, args


async def queue_stats(store: Store, now: float, namespace: str | None = None) -> list[QueueStats]:
    """Counts per queue and status (of ``namespace``, when given), paused queues included:
    one statement (and the paused queues' look-up)."""
    active_sql, args = _active_sql(namespace)
    finished_sql, more = _finished_sql(namespace, len(args) + 1)
    async with store.conn() as c:
        rows = await c.fetch(f"{active_sql} UNION ALL {finished_sql}", *args, *more)
    active = [r for r in rows if r["status"] not in _FINISHED]
    finished = [r for r in rows if r["status"] in _FINISHED]
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
        if status is Status.QUEUED:  # two rows: the unkeyed and the keyed tasks
            stat.depth += int(row["n"])
            age = max(0.0, now - float(row["oldest"]))
            stat.oldest_queued_age_seconds = max(stat.oldest_queued_age_seconds or 0.0, age)
    for row in finished:
        if row["n"]:
            entry(row["queue"]).counts[Status(row["status"])] += int(row["n"])
    for queue, pause in (await store.pauses.current()).items():  # also when it holds none
        stat = entry(queue)
        stat.paused, stat.paused_at = True, to_datetime(pause.paused_at)
        stat.paused_by = pause.paused_by
    if sum(int(r["n"]) for r in finished if r["tail"]) >= ADVANCE_ROWS:
        advance_soon(store, time.time())
    return [stats[queue] for queue in sorted(stats)]


def advance_soon(store: Store, now: float) -> None:
    """Start :func:`advance` in the background unless one runs for ``store`` already: a
    first move on a large table rolls up everything stored, which may take minutes."""
    job = _jobs.get(store)
    if job is not None and not job.done():
        return
    _jobs[store] = asyncio.get_running_loop().create_task(_advance_logged(store, now))


async def _advance_logged(store: Store, now: float) -> None:
    try:
        await advance(store, now)
    except Exception as exc:  # the store is down or closing: the next reader tries again
        log.warning("could not roll finished tasks up: %s: %s", type(exc).__name__, exc)


async def advance(store: Store, now: float, min_rows: int = ADVANCE_ROWS) -> int:
    """Move the mark to ``now - LAG`` (down to a multiple of the finest tier) and add the
    finished tasks it passes to ``finished_counts`` and ``finished_stats``, if at least
    ``min_rows`` finished in between; returns how many were added (0: left as it was).
    The range is moved in pieces of at most :data:`PIECE_ROWS` rows, each its own
    transaction; another caller moving the mark meanwhile is left to it."""
    target = float(math.floor((min(now, time.time()) - LAG) / TIERS[0]) * TIERS[0])
    async with store.conn() as c:
        upto = await _mark(c)
        if upto >= target:
            return 0
        pending = sum(int(r["n"]) for r in await _since(c, upto, target, None, False))
        if pending < min_rows:
            return 0
    total = 0
    while upto < target:
        async with store.conn() as c:
            nxt = await _next_after(c, upto)
            end = target
            if nxt is not None and nxt < target:  # skip the gap, then take a piece
                base = max(upto, math.floor(nxt / TIERS[0]) * TIERS[0])
                piece = 3600.0
                while True:  # halve the piece until it holds few enough rows
                    end = min(base + piece, target)
                    n = sum(int(r["n"]) for r in await _since(c, upto, end, None, False))
                    if n <= PIECE_ROWS or end - base <= TIERS[0]:
                        break
                    piece = max(TIERS[0], math.floor(piece / 2 / TIERS[0]) * TIERS[0])
        moved = await _roll(store, upto, end)
        if moved is None:
            return total  # someone else moves it
        total += moved
        upto = end
    async with store.tx() as c:
        for tier, kept in zip(TIERS, KEPT, strict=True):
            await c.execute(
                "DELETE FROM finished_stats WHERE tier = $1 AND bucket < $2", tier, now - kept
            )
    return total


async def _next_after(c: Conn, start: float) -> float | None:
    """The earliest ``updated_at`` at or after ``start`` of a finished task: one probe per
    (status, queue)."""
    found: float | None = None
    for status in _STATUSES:
        for queue in await _queues(c, status):
            rows = await c.fetch(
                f"SELECT min(updated_at) AS t FROM tasks WHERE {lifecycle.PURGE.where()} "
                "AND status = $1 AND queue = $2 AND updated_at >= $3",
                status.value,
                queue,
                start,
            )
            if rows and rows[0]["t"] is not None:
                t = float(rows[0]["t"])
                found = t if found is None else min(found, t)
    return found


async def _roll(store: Store, start: float, end: float) -> int | None:
    """Add the finished tasks of ``[start, end)`` to both tables and move the mark from
    ``start`` to ``end``, in one transaction; None if the mark is not at ``start`` or
    another transaction holds it."""
    lock = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgresql" else ""
    async with store.tx() as c:
        rows = await c.fetch(f"SELECT upto FROM finished_mark WHERE id = 1{lock}")
        if not rows or float(rows[0]["upto"]) != start:
            return None
        found = await _finished_rows(c, start, end)
        totals: dict[tuple[str, str, str], int] = {}
        stats: dict[tuple[int, str, float, str, str, str], Stat] = {}
        for r in found:
            status = r["status"]
            key = (r["namespace"], r["queue"], status)
            totals[key] = totals.get(key, 0) + 1
            done = float(r["updated_at"])
            timed = status == Status.SUCCEEDED.value and r["run"] is not None
            for tier in TIERS:
                bucket = math.floor(done / tier) * tier
                for name in (r["name"], ""):
                    stat = stats.get((tier, name, bucket, *key))
                    if stat is None:
                        stat = stats[(tier, name, bucket, *key)] = Stat()
                    stat.n += 1
                    if timed:
                        stat.add(float(r["run"]), float(r["wait"]))
        if totals:
            await c.executemany(
                "INSERT INTO finished_counts (namespace, queue, status, n) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, queue, status) DO UPDATE "
                "SET n = finished_counts.n + excluded.n",
                [(*k, n) for k, n in totals.items()],
            )
        for tier in TIERS:  # the tier buckets already begun before `start`
            first = math.floor(start / tier) * tier
            if first == start:
                continue
            for old in await c.fetch(
                "SELECT * FROM finished_stats WHERE tier = $1 AND bucket = $2", tier, first
            ):
                begun = (tier, old["name"], first, old["namespace"], old["queue"], old["status"])
                if begun in stats:
                    stats[begun].merge(Stat.of(old))
        if stats:
            await c.executemany(
                "INSERT INTO finished_stats (tier, name, bucket, namespace, queue, status, n, "
                "run, wait) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (tier, name, bucket, namespace, queue, status) DO UPDATE "
                "SET n = excluded.n, run = excluded.run, wait = excluded.wait",
                [(*k, st.n, *st.texts()) for k, st in stats.items()],
            )
        await c.execute("UPDATE finished_mark SET upto = $1 WHERE id = 1", end)
    return len(found)


async def _finished_rows(c: Conn, start: float, end: float) -> list[Row]:
    """Each task finished in ``[start, end)`` with its last attempt's run and wait."""
    pairs = [(s, q) for s in _STATUSES for q in await _queues(c, s)]
    found: list[Row] = []
    for first in range(0, len(pairs), _PAIRS_PER_QUERY):
        args: list[Any] = [start, end]
        parts = []
        for status, queue in pairs[first : first + _PAIRS_PER_QUERY]:
            args += [status.value, queue]
            parts.append(
                "SELECT t.namespace, t.queue, t.name, t.status, t.updated_at, "
                "a.finished_at - a.started_at AS run, a.started_at - t.run_at AS wait "
                "FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id AND "
                f"a.attempt = t.attempts WHERE {lifecycle.PURGE.where('t.status')} "
                f"AND t.status = ${len(args) - 1} AND t.queue = ${len(args)} "
                "AND t.updated_at >= $1 AND t.updated_at < $2"
            )
        found += await c.fetch(" UNION ALL ".join(parts), *args)
    return found


def _bin(seconds: float) -> int:
    """Histogram bin of a duration: ten per decade (about 26 % wide), 1 µs and below in
    one."""
    return math.floor(math.log10(max(seconds, 1e-6)) * 10)


def bin_value(b: int) -> float:
    """The value a bin stands for: its geometric middle (within 13 % of any value in it)."""
    return float(10 ** ((b + 0.5) / 10))


@dataclass(slots=True)
class Stat:
    """One ``finished_stats`` row being built: a count, and histograms of the succeeded
    ones' run and wait (bin -> count)."""

    n: int = 0
    run: dict[int, int] = field(default_factory=dict)
    wait: dict[int, int] = field(default_factory=dict)

    def add(self, run: float, wait: float) -> None:
        b = _bin(run)
        self.run[b] = self.run.get(b, 0) + 1
        b = _bin(wait)
        self.wait[b] = self.wait.get(b, 0) + 1

    def merge(self, other: Stat) -> None:
        self.n += other.n
        for mine, theirs in ((self.run, other.run), (self.wait, other.wait)):
            for b, k in theirs.items():
                mine[b] = mine.get(b, 0) + k

    def texts(self) -> tuple[str | None, str | None]:
        if not self.run:
            return None, None
        return dumps_hist(self.run), dumps_hist(self.wait)

    @classmethod
    def of(cls, row: Row) -> Stat:
        return cls(int(row["n"]), loads_hist(row["run"]), loads_hist(row["wait"]))


def dumps_hist(hist: dict[int, int]) -> str:
    return json.dumps({str(b): k for b, k in sorted(hist.items())}, separators=(",", ":"))


def loads_hist(text: str | None) -> dict[int, int]:
    return {int(b): int(k) for b, k in orjson.loads(text).items()} if text else {}


def hist_quantiles(hist: dict[int, int], qs: Sequence[float]) -> tuple[float, ...]:
    """Quantiles of a histogram: the value of the bin holding each rank (as
    ``percentile_cont``'s ``q * (n - 1)``, without interpolating inside a bin)."""
    total = sum(hist.values())
    ordered = sorted(hist.items())
    out = []
    for q in qs:
        rank = q * (total - 1)
        seen = 0
        value = bin_value(ordered[-1][0])
        for b, k in ordered:
            seen += k
            if seen > rank:
                value = bin_value(b)
                break
        out.append(value)
    return tuple(out)
