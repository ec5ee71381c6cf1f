"""Concurrency and rate limits: at most N tasks of one ``concurrency_key`` run at once,
across every queue and worker, enforced where work is taken; and at most a rate of them
come due (:meth:`Limits.spaced`) and start (:func:`starts_allowed`), by GCRA.

A task with a ``concurrency_key`` (migration 0021) is outside the plain claim's index
(``tasks_ready`` holds unkeyed tasks only, so the plain claim costs what it did). Workers of
a queue that ever had a keyed task (a row in ``limited_queues``, written by migration
0021's insert trigger, whatever inserted the task) also run
:meth:`Limits.claim` — only they, and the rest pay nothing but a read of that
table every :data:`REFRESH_SECONDS`.

The limited claim:

- **counts** the running tasks of each key (index ``tasks_key_running``): a task holds its
  slot from its claim until its attempt ends; a crashed worker's until the lease reaper
  ends it, after the lease expired, never before;
- is **serialised per key**: on PostgreSQL each runs in a transaction whose first
  statement (:data:`PG_KEYS`) picks the keys to claim from and takes a transaction-scoped
  advisory lock on each (skipping keys another claim holds); the claim statement
  (:data:`PG_PICK`), whose snapshot is taken once those locks are held, sees every earlier
  claim of those keys committed (a statement's snapshot is taken when it starts: without
  the locks two workers could both count 0 running for a key and both take one). Claims of
  different keys run side by side. On SQLite every write transaction is serialised anyway;
- is **fair**: it takes the queue's keys round-robin, the first waiting task of every key
  it takes before the second of any: one key with 100,000 queued tasks gets one turn
  among the keys like any other. On PostgreSQL the keys are walked in key order by a loose
  index scan of ``tasks_limited`` (one probe per key, not per task), each claim going on
  from where the process's previous one stopped and taking the first keys with a free
  slot, as many as it wants tasks (so a claim costs O(its size), not O(keys)); SQLite,
  whose writes are one at a time anyway, ranks the queue's keyed tasks in one window query
  and takes every key's first task in the order of priority, then age.

A queue's first keyed task ever waits up to :data:`REFRESH_SECONDS` for the workers to
re-read ``limited_queues``; the row stays, so later ones do not. docs/flow-control.md has
the whole picture.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from chronoq import lifecycle
from chronoq.lifecycle import Status
from chronoq.store.pauses import not_paused
from chronoq.store.records import NewTask, TaskRecord

if TYPE_CHECKING:
    from chronoq.store.base import Store

#: how often a worker re-reads which queues have keyed tasks (a keyed task submitted to a
#: queue for the first time waits at most this long more)
REFRESH_SECONDS = 1.0
#: the namespace (first key) of the PostgreSQL advisory locks a limited claim holds on the
#: keys it claims from, for its transaction
LOCK = 0x63686C69  # "chli"

_QUEUED = lifecycle.CLAIM.where("t.status")
_RUNNING = lifecycle.is_(Status.RUNNING)

#: SQLite: the first waiting tasks of each key with room, round-robin across keys ($4 the
#: queue, $5 how many, $6 a JSON object of the rated keys' starts allowed now)
SQLITE_PICK = (
    "SELECT id FROM (SELECT t.id, t.priority, t.run_at, ROW_NUMBER() OVER (PARTITION BY "
    "t.concurrency_key ORDER BY t.priority DESC, t.run_at, t.id) AS rn, "
    "MIN(COALESCE(t.concurrency_limit, 1000000000) - COALESCE(r.n, 0), "
    "COALESCE(caps.value, 1000000000)) AS room FROM tasks t "
    "LEFT JOIN (SELECT concurrency_key, COUNT(*) AS n FROM tasks WHERE "
    f"{_RUNNING} AND concurrency_key IS NOT NULL GROUP BY concurrency_key) r "
    "ON r.concurrency_key = t.concurrency_key "
    "LEFT JOIN json_each($6) AS caps ON caps.key = t.concurrency_key "
    f"WHERE {_QUEUED} AND t.queue = $4 AND t.concurrency_key IS NOT NULL "
    f"AND {not_paused('$4')}) c "
    "WHERE rn <= room ORDER BY rn, priority DESC, run_at, id LIMIT $5"
)

#: PostgreSQL, first statement: the keys to claim from. A loose index scan of
#: ``tasks_limited`` walks the queue's keys in key order from after ``$4`` (where this
#: process's previous claim stopped: round-robin), one probe per key, and stops at the
#: ``$2``-th key with a free slot; each key returned is locked for the transaction
#: (``pg_try_advisory_xact_lock``, namespace ``$3``, the key hashed with the schema: advisory
#: locks are per database; a key another claim holds, or one whose hash collides with it,
#: is skipped this time).
#: ``$1`` the queue.
PG_KEYS = (
    "WITH RECURSIVE keys AS ("
    "(SELECT t.concurrency_key AS k FROM tasks t WHERE "
    f"{_QUEUED} AND t.queue = $1 AND t.concurrency_key > $4 "
    "ORDER BY t.concurrency_key LIMIT 1) "
    "UNION ALL SELECT (SELECT t.concurrency_key FROM tasks t WHERE "
    f"{_QUEUED} AND t.queue = $1 AND t.concurrency_key > keys.k "
    "ORDER BY t.concurrency_key LIMIT 1) FROM keys WHERE keys.k IS NOT NULL) "
    "SELECT k FROM (SELECT keys.k FROM keys WHERE keys.k IS NOT NULL AND "
    "(SELECT COALESCE(t.concurrency_limit, 1000000000) FROM tasks t WHERE "
    f"{_QUEUED} AND t.queue = $1 AND t.concurrency_key = keys.k "
    "ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1) > (SELECT count(*) FROM tasks r WHERE "
    f"{lifecycle.is_(Status.RUNNING, 'r.status')} AND r.concurrency_key = keys.k) "
    "OFFSET 0) AS roomy "
    "WHERE pg_try_advisory_xact_lock($3, hashtext(current_schema() || ':' || k)) LIMIT $2"
)

#: PostgreSQL, second statement (its snapshot is taken once the keys are locked, so it sees
#: every claim of them committed before): the keys' free slots and first waiting tasks,
#: round-robin. ``$4`` the queue, ``$5`` how many, ``$6`` the locked keys, ``$7`` the starts
#: each may make now (its rate's, else no cap).
PG_PICK = (
    "WITH room AS (SELECT k, LEAST(keys.cap, (SELECT COALESCE(t.concurrency_limit, 1000000000) "
    f"FROM tasks t WHERE {_QUEUED} AND t.queue = $4 AND t.concurrency_key = keys.k "
    "ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1) - (SELECT count(*) FROM tasks r WHERE "
    f"{lifecycle.is_(Status.RUNNING, 'r.status')} AND r.concurrency_key = keys.k)) AS free "
    "FROM unnest($6::text[], $7::int[]) AS keys(k, cap)), "
    "ranked AS (SELECT h.* FROM room, LATERAL (SELECT s.id, s.priority, s.run_at, "
    "ROW_NUMBER() OVER (ORDER BY s.priority DESC, s.run_at, s.id) AS rn FROM ("
    f"SELECT t.id, t.priority, t.run_at FROM tasks t WHERE {_QUEUED} AND t.queue = $4 "
    "AND t.concurrency_key = room.k ORDER BY t.priority DESC, t.run_at, t.id "
    "LIMIT LEAST($5, room.free)) s) h WHERE room.free > 0) "
    f"SELECT id FROM ranked WHERE {not_paused('$4::text')} "
    "ORDER BY rn, priority DESC, run_at, id LIMIT $5"
)

#: GCRA's step for ``n`` tasks of a key (``$1`` the key, ``$2`` seconds between two tasks,
#: ``$3`` now, ``$4`` n times ``$2``): the theoretical arrival time moves from
#: max(tat, now) on by n intervals; the tasks take the turns it passed. One row per key, so
#: concurrent submitters in any process queue up on it and never share a turn.
TAKE = (
    "INSERT INTO rate_buckets (key, spacing, tat) VALUES ($1, CAST($2 AS DOUBLE PRECISION), "
    "CAST($3 AS DOUBLE PRECISION) + CAST($4 AS DOUBLE PRECISION)) ON CONFLICT (key) DO UPDATE "
    "SET spacing = excluded.spacing, tat = CASE WHEN rate_buckets.tat > excluded.tat - "
    "CAST($4 AS DOUBLE PRECISION) THEN rate_buckets.tat + CAST($4 AS DOUBLE PRECISION) "
    "ELSE excluded.tat END RETURNING tat"
)


#: the start side's rate, relative to the key's: a little faster, so tasks made late (a
#: stalled scheduler, busy workers) catch up, and still at most ``1.1 r + 1`` starts in any
#: second at rate ``r`` (55 at 50/s: ``floor((1 + 2 x 0.85 / 53) x 53) + 1``)
START_SPEEDUP = 1.06
#: the start side's tolerance (GCRA's tau, and the credit an idle key keeps), in intervals
START_TOLERANCE = 0.85


def start_step(bucket: Any) -> tuple[float, float]:
    """The start side's interval and tolerance for a rate bucket row, in seconds."""
    step = float(bucket["spacing"]) / START_SPEEDUP
    return step, START_TOLERANCE * step


def starts_allowed(bucket: Any, now: float) -> int:
    """How many tasks of a rated key may start now: GCRA on the start side — the bucket's
    ``started_tat`` (kept no further back than the tolerance) may run at most the
    tolerance ahead of now (:data:`START_SPEEDUP`, :data:`START_TOLERANCE`)."""
    step, tolerance = start_step(bucket)
    base = max(float(bucket["started_tat"]), now - tolerance)
    if base > now + tolerance:
        return 0
    return int((now + tolerance - base) // step) + 1


def started_after(bucket: Any, now: float, n: int) -> float:
    """The bucket's ``started_tat`` once ``n`` tasks of its key started at ``now``."""
    step, tolerance = start_step(bucket)
    return max(float(bucket["started_tat"]), now - tolerance) + n * step


class Limits:
    """The limited claim and what it reads (``store.limits``); given the whole store, whose
    task side opens the claimed tasks' inputs."""

    def __init__(self, db: Store) -> None:
        self.db = db
        #: the queues with keyed tasks, as last read, and when (monotonic)
        self._limited: frozenset[str] = frozenset()
        self._limited_read = -1e18
        #: PostgreSQL: per queue, the key this process's last limited claim stopped at
        self._key_cursor: dict[str, str] = {}

    @property
    def limited_now(self) -> frozenset[str]:
        """The queues with keyed tasks as last read (no query)."""
        return self._limited

    async def spaced(self, c: Any, tasks: Sequence[NewTask]) -> list[NewTask]:
        """Rate limits: ``tasks`` with their run times spread by their keys' buckets (GCRA,
        :data:`TAKE`), in the submission's transaction; a task whose turn is later than its
        run time waits ``scheduled`` until then. Tasks without a rate come back as they are."""
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            if task.rate_interval is not None and task.concurrency_key is not None:
                groups.setdefault(task.concurrency_key, []).append(i)
        if not groups:
            return list(tasks)
        out = list(tasks)
        for key, members in groups.items():
            spacing = float(tasks[members[-1]].rate_interval or 0.0)  # the latest rate wins
            now = tasks[members[0]].created_at
            rows = await c.fetch(TAKE, key, spacing, now, spacing * len(members))
            start = float(rows[0]["tat"]) - spacing * len(members)
            for n, i in enumerate(members):
                task = tasks[i]
                turn = max(task.run_at, start + n * spacing)
                status = Status.QUEUED if turn <= task.created_at else Status.SCHEDULED
                out[i] = dataclasses.replace(task, run_at=turn, status=status)
        return out

    async def queues(self, fresh: bool = False) -> frozenset[str]:
        """The queues that have had keyed tasks (re-read every :data:`REFRESH_SECONDS`)."""
        clock = time.monotonic()
        if fresh or clock - self._limited_read >= REFRESH_SECONDS:
            async with self.db.conn() as c:
                rows = await c.fetch("SELECT queue FROM limited_queues")
            self._limited, self._limited_read = frozenset(r["queue"] for r in rows), clock
        return self._limited

    async def claim(
        self, worker_id: str, queue: str, limit: int, now: float, lease: float
    ) -> list[TaskRecord]:
        """Take up to ``limit`` keyed tasks of ``queue`` whose keys have a free slot,
        round-robin across keys, and open their attempts (serialised: module docstring)."""
        pg = self.db.dialect == "postgresql"
        async with self.db.tx() as c:
            if pg:
                after = self._key_cursor.get(queue, "")
                locked = [r["k"] for r in await c.fetch(PG_KEYS, queue, limit, LOCK, after)]
                if len(locked) < limit and after:  # the walk reached the last key: wrap
                    more = await c.fetch(PG_KEYS, queue, limit - len(locked), LOCK, "")
                    locked += [r["k"] for r in more if r["k"] not in locked]
                if not locked:
                    self._key_cursor.pop(queue, None)
                    return []
                self._key_cursor[queue] = locked[-1] if len(locked) >= limit else ""
                buckets = await c.fetch(
                    f"SELECT * FROM rate_buckets WHERE key {self.db.in_list('$1')}",
                    self.db.list_param(locked),
                )
            else:
                buckets = await c.fetch(
                    "SELECT * FROM rate_buckets WHERE key IN (SELECT concurrency_key FROM "
                    f"tasks t WHERE {_QUEUED} AND t.queue = $1 AND t.rate_interval IS NOT NULL)",
                    queue,
                )
            # the attempts start now, once the keys are held (SQLite: once the write lock
            # is): after every earlier attempt of these keys ended, so the attempt records
            # of a key never overlap
            now = max(now, time.time())
            caps = {b["key"]: starts_allowed(b, now) for b in buckets}
            keys: tuple[Any, ...]
            if pg:
                locked = [k for k in locked if caps.get(k, 1) > 0]
                if not locked:
                    return []
                pick, keys = (
                    PG_PICK,
                    (
                        self.db.list_param(locked),
                        [caps.get(k, 1_000_000_000) for k in locked],
                    ),
                )
            else:
                pick, keys = SQLITE_PICK, (orjson.dumps(caps).decode(),)
            rows = await c.fetch(
                f"UPDATE tasks SET {lifecycle.CLAIM.to()}, attempts = attempts + 1, "
                "worker_id = $1, lease_expires_at = $2, updated_at = $3 "
                f"WHERE id IN ({pick}) AND {lifecycle.CLAIM.where()} RETURNING *",
                worker_id,
                now + lease,
                now,
                queue,
                limit,
                *keys,
            )
            started: dict[str, int] = {}
            for r in rows:
                if r["concurrency_key"] in caps:
                    started[r["concurrency_key"]] = started.get(r["concurrency_key"], 0) + 1
            if started:
                await c.executemany(
                    "UPDATE rate_buckets SET started_tat = $2 WHERE key = $1",
                    [
                        (b["key"], started_after(b, now, n))
                        for b in buckets
                        if (n := started.get(b["key"], 0))
                    ],
                )
            if rows:
                await c.executemany(
                    "INSERT INTO attempts (task_id, attempt, worker_id, started_at) "
                    "VALUES ($1, $2, $3, $4)",
                    [(r["id"], r["attempts"], worker_id, now) for r in rows],
                )
        return await self.db.with_inputs(rows, now)

    async def usage(self, now: float, queues: Iterable[str]) -> dict[str, Any]:
        """Per queue of ``queues`` (those with keyed tasks): its keys' running and queued
        counts and limits (rows ``queue, key, running, queued, lim``), and the tasks
        waiting for a rate's turn with their keys' buckets (rows ``queue, key, waiting,
        spacing, tat``); for ``/v1/queues`` and the metrics. One query each."""
        wanted = sorted(set(queues))
        if not wanted:
            return {"keys": [], "rates": []}
        running = lifecycle.is_(Status.RUNNING, "r.status")
        async with self.db.conn() as c:
            keys = await c.fetch(
                "SELECT q.queue, q.concurrency_key AS key, count(*) AS queued, "
                "MAX(q.concurrency_limit) AS lim, (SELECT count(*) FROM tasks r WHERE "
                f"{running} AND r.concurrency_key = q.concurrency_key) AS running "
                f"FROM tasks q WHERE {lifecycle.is_(Status.QUEUED, 'q.status')} "
                f"AND q.concurrency_key IS NOT NULL AND q.queue {self.db.in_list('$1')} "
                "GROUP BY q.queue, q.concurrency_key",
                self.db.list_param(wanted),
            )
            busy = await c.fetch(
                "SELECT r.queue, r.concurrency_key AS key, count(*) AS running, "
                f"MAX(r.concurrency_limit) AS lim FROM tasks r WHERE {running} "
                f"AND r.concurrency_key IS NOT NULL AND r.queue {self.db.in_list('$1')} "
                "GROUP BY r.queue, r.concurrency_key",
                self.db.list_param(wanted),
            )
            rates = await c.fetch(
                "SELECT t.queue, t.concurrency_key AS key, count(*) AS waiting, b.spacing, b.tat "
                "FROM tasks t JOIN rate_buckets b ON b.key = t.concurrency_key "
                f"WHERE {lifecycle.is_(Status.SCHEDULED, 't.status')} "
                "AND t.rate_interval IS NOT NULL AND t.run_at > $2 "
                f"AND t.queue {self.db.in_list('$1')} GROUP BY t.queue, t.concurrency_key, "
                "b.spacing, b.tat",
                self.db.list_param(wanted),
                now,
            )
        seen = {(r["queue"], r["key"]) for r in keys}
        idle = [
            {
                "queue": r["queue"],
                "key": r["key"],
                "queued": 0,
                "lim": r["lim"],
                "running": r["running"],
            }
            for r in busy
            if (r["queue"], r["key"]) not in seen
        ]
        return {"keys": [dict(r) for r in keys] + idle, "rates": [dict(r) for r in rates]}


def key_full(row: Any) -> bool:
    """Whether a :meth:`Limits.usage` key row has no free slot."""
    return row["lim"] is not None and int(row["running"]) >= int(row["lim"])


def waiting(usage: dict[str, Any]) -> dict[tuple[str, str], int]:
    """``(queue, "concurrency" | "rate")``: the tasks of each queue waiting on a limit —
    queued with a full key, or waiting for a rate's turn — from
    :meth:`Limits.usage`."""
    found: dict[tuple[str, str], int] = {}
    for row in usage["keys"]:
        if key_full(row):
            at = (row["queue"], "concurrency")
            found[at] = found.get(at, 0) + int(row["queued"])
    for row in usage["rates"]:
        at = (row["queue"], "rate")
        found[at] = found.get(at, 0) + int(row["waiting"])
    return found
