"""Concurrency limits: at most N tasks of one ``concurrency_key`` run at once, across every
queue and worker, enforced where work is taken.

A task with a ``concurrency_key`` (migration 0021) is outside the plain claim's index
(``tasks_ready`` holds unkeyed tasks only, so the plain claim costs what it did). Workers of
a queue that ever had a keyed task (a row in ``limited_queues``, written by migration
0021's insert trigger, whatever inserted the task) also run
:meth:`LimitQueries.claim_limited` — only they, and the rest pay nothing but a read of that
table every :data:`REFRESH_SECONDS`.

The limited claim:

- **counts** the running tasks of each key (index ``tasks_key_running``): a task holds its
  slot from its claim until its attempt ends; a crashed worker's until the lease reaper
  ends it, after the lease expired, never before;
- is **serialised**: on PostgreSQL each runs in a transaction that first takes one
  transaction-scoped advisory lock (:data:`LOCK`), so the claim statement, which starts
  after the lock is held, sees every earlier limited claim committed (a statement's
  snapshot is taken when it starts; without the lock two workers could both count 0 running
  for a key and both take one). On SQLite every write transaction is serialised anyway;
- is **fair**: it takes the queue's keys round-robin, the first waiting task of every key
  with a free slot before the second of any (ordered by priority, then age): one key with
  100,000 queued tasks delays another key's single task by at most one claim. On
  PostgreSQL the keys are found by a loose index scan of ``tasks_limited`` (one probe per
  key, not per task); SQLite ranks the queue's keyed tasks in one window query.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

from chronoq import lifecycle
from chronoq.lifecycle import Status
from chronoq.store.pauses import not_paused
from chronoq.store.records import NewTask, Row, TaskRecord

#: how often a worker re-reads which queues have keyed tasks (a keyed task submitted to a
#: queue for the first time waits at most this long more)
REFRESH_SECONDS = 1.0
#: the PostgreSQL advisory lock every limited claim takes (in its transaction)
LOCK = 0x63686C696D6974  # "chlimit"

_QUEUED = lifecycle.CLAIM.where("t.status")
_RUNNING = lifecycle.is_(Status.RUNNING)

#: SQLite: the first waiting tasks of each key with room, round-robin across keys ($4 the
#: queue, $5 how many)
SQLITE_PICK = (
    "SELECT id FROM (SELECT t.id, t.priority, t.run_at, ROW_NUMBER() OVER (PARTITION BY "
    "t.concurrency_key ORDER BY t.priority DESC, t.run_at, t.id) AS rn, "
    "COALESCE(t.concurrency_limit, 1000000000) - COALESCE(r.n, 0) AS room FROM tasks t "
    "LEFT JOIN (SELECT concurrency_key, COUNT(*) AS n FROM tasks WHERE "
    f"{_RUNNING} AND concurrency_key IS NOT NULL GROUP BY concurrency_key) r "
    "ON r.concurrency_key = t.concurrency_key "
    f"WHERE {_QUEUED} AND t.queue = $4 AND t.concurrency_key IS NOT NULL "
    f"AND {not_paused('$4')}) c "
    "WHERE rn <= room ORDER BY rn, priority DESC, run_at, id LIMIT $5"
)

#: PostgreSQL: the same pick, key by key: a loose index scan of ``tasks_limited`` finds the
#: queue's keys, then each key's free slots and its first waiting tasks, at most that many
PG_PICK = (
    "WITH RECURSIVE keys AS ("
    "(SELECT t.concurrency_key AS k FROM tasks t WHERE "
    f"{_QUEUED} AND t.queue = $4 AND t.concurrency_key IS NOT NULL "
    "ORDER BY t.concurrency_key LIMIT 1) "
    "UNION ALL SELECT (SELECT t.concurrency_key FROM tasks t WHERE "
    f"{_QUEUED} AND t.queue = $4 AND t.concurrency_key > keys.k "
    "ORDER BY t.concurrency_key LIMIT 1) FROM keys WHERE keys.k IS NOT NULL), "
    "room AS (SELECT k, (SELECT COALESCE(t.concurrency_limit, 1000000000) FROM tasks t WHERE "
    f"{_QUEUED} AND t.queue = $4 AND t.concurrency_key = keys.k "
    "ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1) - (SELECT count(*) FROM tasks r WHERE "
    f"{lifecycle.is_(Status.RUNNING, 'r.status')} AND r.concurrency_key = keys.k) AS free "
    "FROM keys WHERE k IS NOT NULL), "
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


class LimitQueries(abc.ABC):
    """The limited claim and what it reads, mixed into :class:`chronoq.store.base.Store`."""

    dialect: str

    @abc.abstractmethod
    def conn(self) -> Any: ...

    @abc.abstractmethod
    def tx(self) -> Any: ...

    @abc.abstractmethod
    def in_list(self, placeholder: str) -> str: ...

    @abc.abstractmethod
    def list_param(self, values: Iterable[str]) -> Any: ...

    @abc.abstractmethod
    async def with_inputs(self, rows: Sequence[Row], now: float) -> list[TaskRecord]: ...

    #: the queues with keyed tasks, as last read, and when (monotonic)
    _limited: frozenset[str]
    _limited_read: float

    def _init_limits(self) -> None:
        self._limited, self._limited_read = frozenset(), -1e18

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

    async def limited_queues(self, fresh: bool = False) -> frozenset[str]:
        """The queues that have had keyed tasks (re-read every :data:`REFRESH_SECONDS`)."""
        clock = time.monotonic()
        if fresh or clock - self._limited_read >= REFRESH_SECONDS:
            async with self.conn() as c:
                rows = await c.fetch("SELECT queue FROM limited_queues")
            self._limited, self._limited_read = frozenset(r["queue"] for r in rows), clock
        return self._limited

    async def claim_limited(
        self, worker_id: str, queue: str, limit: int, now: float, lease: float
    ) -> list[TaskRecord]:
        """Take up to ``limit`` keyed tasks of ``queue`` whose keys have a free slot,
        round-robin across keys, and open their attempts (serialised: module docstring)."""
        pick = PG_PICK if self.dialect == "postgresql" else SQLITE_PICK
        async with self.tx() as c:
            if self.dialect == "postgresql":
                await c.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
            rows = await c.fetch(
                f"UPDATE tasks SET {lifecycle.CLAIM.to()}, attempts = attempts + 1, "
                "worker_id = $1, lease_expires_at = $2, updated_at = $3 "
                f"WHERE id IN ({pick}) AND {lifecycle.CLAIM.where()} RETURNING *",
                worker_id,
                now + lease,
                now,
                queue,
                limit,
            )
            if rows:
                await c.executemany(
                    "INSERT INTO attempts (task_id, attempt, worker_id, started_at) "
                    "VALUES ($1, $2, $3, $4)",
                    [(r["id"], r["attempts"], worker_id, now) for r in rows],
                )
        return await self.with_inputs(rows, now)

    async def key_usage(self, queues: Sequence[str] | None = None) -> list[Row]:
        """Per queue and key: tasks running and queued, and the key's limit (the largest
        its tasks carry). For ``/v1/queues`` and metrics."""
        only, args = (
            ("", [])
            if queues is None
            else (f"AND queue {self.in_list('$1')} ", [self.list_param(queues)])
        )
        async with self.conn() as c:
            rows: list[Row] = await c.fetch(
                "SELECT queue, concurrency_key AS key, "
                f"SUM(CASE WHEN {lifecycle.is_(Status.RUNNING)} THEN 1 ELSE 0 END) AS running, "
                f"SUM(CASE WHEN {lifecycle.is_(Status.QUEUED)} THEN 1 ELSE 0 END) AS queued, "
                "MAX(concurrency_limit) AS lim FROM tasks WHERE concurrency_key IS NOT NULL "
                f"AND ({lifecycle.is_(Status.RUNNING)} OR {lifecycle.is_(Status.QUEUED)}) {only}"
                "GROUP BY queue, concurrency_key ORDER BY queue, concurrency_key",
                *args,
            )
        return rows
