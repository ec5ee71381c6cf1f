"""The store: the single source of truth for tasks, attempts and schedules.

:class:`Store` holds every task query in one dialect-neutral form (``$1`` placeholders)
and the repositories of everything else (``store.schedules``, ``store.workers``, …); the
SQLite and PostgreSQL subclasses only say how to connect, run a statement, open a
transaction and spell a list parameter, and override a statement where the dialect can
do it in fewer round trips.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from chronoq import lifecycle, states
from chronoq.batching import GroupCommit
from chronoq.events import EventBus, LogEvent, ProgressEvent
from chronoq.models import Attempt, QueueStats, TaskCreate
from chronoq.notify import Hub
from chronoq.states import Status
from chronoq.store import counts, tasklogs, uniqueness, workflows
from chronoq.store.connector import Connector
from chronoq.store.filters import page
from chronoq.store.keys import Keys
from chronoq.store.leases import Fence, Leases
from chronoq.store.limits import Limits
from chronoq.store.pauses import Pauses, not_paused
from chronoq.store.records import (
    INSERT_BATCH,
    INSERT_TASK_COLUMNS,
    Completion,
    Conn,
    NewTask,
    NotFound,
    Row,
    TaskRecord,
    attempt_from_row,
    dumps,
    storable_json,
)
from chronoq.store.schedules import Schedules
from chronoq.store.workers import WorkerRegistry

__all__ = ["Completion", "Conn", "NotFound", "Row", "Store", "TaskRecord", "dumps", "opened"]


#: what a user's cancel and retry set (``$2``: now), one task or a batch (store.bulk) alike
CANCEL = f"{lifecycle.CANCEL.to()}, updated_at = $2, lease_expires_at = NULL"
#: a cancelled running task's open attempt (``$2``: now)
CANCEL_ATTEMPT = "finished_at = $2, outcome = 'cancelled', error = 'cancelled by request'"
#: a retry grants at least one more attempt; a retried task gives up its unique key
#: (another task may hold it by now: :mod:`chronoq.store.uniqueness`)
RETRY = (
    f"{lifecycle.RETRY.to()}, run_at = $2, updated_at = $2, max_attempts = CASE WHEN "
    "max_attempts > attempts THEN max_attempts ELSE attempts + 1 END, unique_key = NULL"
)


class Store(Connector):
    """Durable task state, shared by the API, the scheduler and the workers: the task
    queries here, the plumbing from :class:`~chronoq.store.connector.Connector`, and the
    rest of the store as repositories it holds (``keys``, ``leases``, ``pauses``,
    ``workers``, ``schedules``, ``limits``)."""

    #: the classes of the repositories a dialect says how to run (PostgreSQL's batch)
    schedules_class: type[Schedules] = Schedules
    workers_class: type[WorkerRegistry] = WorkerRegistry

    def __init__(self, hub: Hub | None = None, events: EventBus | None = None) -> None:
        super().__init__(hub, events)
        self._inserts = GroupCommit(
            self._insert_rows, INSERT_BATCH, split=lambda exc: isinstance(exc, self.data_errors)
        )
        self.keys = Keys(self)
        self.leases = Leases(self)
        self.pauses = Pauses(self)
        self.workers = self.workers_class(self)
        self.schedules = self.schedules_class(self)
        self.limits = Limits(self)

    def sibling(self) -> Store | None:
        """A new, unopened store on the same database with connections of its own, for a
        thread that must reach the database while this store's event loop is blocked (the
        blocked-loop watchdog). None when no second connection sees the same data."""
        return None

    async def write_journals(
        self,
        chunks: Sequence[tasklogs.Chunk],
        steps: Sequence[tasklogs.Step],
        events: Sequence[ProgressEvent] = (),
        logs: Sequence[LogEvent] = (),
    ) -> None:
        """A worker's captured output and progress (:func:`chronoq.store.tasklogs.write`)."""
        await tasklogs.write(self, chunks, steps, events, logs)

    def advance_counts_soon(self, now: float) -> None:
        """Move the finished-count mark off the hot path (:func:`.counts.advance_soon`)."""
        counts.advance_soon(self, now)

    async def time_out_workflows(self, now: float) -> int:
        """Fail the workflows past their deadline (:func:`chronoq.store.workflows.time_out`)."""
        return await workflows.time_out(self, now)

    # -- submitting and reading --------------------------------------------------------------
    async def create_task(
        self,
        spec: TaskCreate,
        now: float,
        namespace: str = "default",
        *,
        payload: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Insert a task; returns ``(task, created)``. An idempotency key seen before in
        ``namespace`` returns the existing task with ``created=False``. Concurrent calls
        are written together (group commit): one statement and one commit for all.
        ``payload``: the spec's payload as JSON text, when the caller encoded it already."""
        return await self._inserts.submit(_submitted(spec, now, namespace, payload))

    async def create_tasks(
        self,
        specs: Sequence[TaskCreate],
        now: float,
        namespace: str = "default",
        *,
        payloads: Sequence[str] | None = None,
    ) -> list[tuple[TaskRecord, bool]]:
        """Insert many tasks in one transaction, :data:`INSERT_BATCH` per statement;
        ``(task, created)`` each. ``payloads``: their JSON text, if encoded already."""
        texts = payloads if payloads is not None else [None] * len(specs)
        tasks = [
            _submitted(spec, now, namespace, text) for spec, text in zip(specs, texts, strict=True)
        ]
        found: list[tuple[TaskRecord, bool]] = []
        async with self.tx() as c:
            tasks = await self.limits.spaced(c, tasks)  # rate limits: chronoq.store.limits
            for start in range(0, len(tasks), INSERT_BATCH):
                found += await self._insert_on(c, tasks[start : start + INSERT_BATCH])
        self._announce_created(tasks, found)
        return found

    async def _insert_rows(self, tasks: Sequence[NewTask]) -> list[tuple[TaskRecord, bool]]:
        """The group commit's write: one multi-row INSERT in autocommit mode."""
        async with self._insert_conn() as c:
            tasks = await self.limits.spaced(c, tasks)  # rate limits: chronoq.store.limits
            found = await self._insert_on(c, tasks)
        self._announce_created(tasks, found)
        return found

    def _insert_conn(self) -> Any:
        """``async with``: the connection for the group commit's writes (which never
        overlap); by default one taken from :meth:`conn` for each write."""
        return self.conn()

    def _announce_created(
        self, tasks: Sequence[NewTask], found: Sequence[tuple[TaskRecord, bool]]
    ) -> None:
        """:meth:`inserted` for the tasks that are new (not idempotent repeats)."""
        self.inserted([task for task, (_, created) in zip(tasks, found, strict=True) if created])

    async def _insert_on(self, c: Conn, tasks: Sequence[NewTask]) -> list[tuple[TaskRecord, bool]]:
        """Insert ``tasks``; those whose idempotency key exists in their namespace, or
        whose unique key a waiting or running task holds there, return the existing task
        (the same key in another namespace is another task); a debounced one replaces
        the holder's payload and run time instead, while it still waits. A holder whose
        window ended, or that came due, lets its key go and the task is inserted after
        all."""
        source, args = self.rows_source(tasks)
        inserted = await c.fetch(
            f"{INSERT_TASK_COLUMNS} {source} ON CONFLICT DO NOTHING RETURNING id", *args
        )
        new_ids = {r["id"] for r in inserted}
        skipped = [task for task in tasks if task.id not in new_ids]
        existing = await self._existing(c, skipped, "idempotency_key", "idempotency")
        holders = await self._existing(c, skipped, "unique_key", "uniqueness")
        now = max((t.created_at for t in skipped), default=0.0)
        # a holder this very statement inserted is never let go (its window may be 0 s):
        # the retry below then happens at most once, whatever the batch holds
        lapsed = {
            key for key, r in holders.items() if r["unique_until"] <= now and r["id"] not in new_ids
        }
        for namespace, key in lapsed:
            await c.execute(uniqueness.RELEASE_LAPSED, namespace, key, now)
        holders = {key: r for key, r in holders.items() if key not in lapsed}
        for task in skipped:  # in submission order: the latest debounced payload wins
            if not uniqueness.debounced(task.unique_key) or task.uniqueness not in holders:
                continue
            holder = holders[task.uniqueness]
            held = (holder["id"], task.unique_key)
            replaced = await c.fetch(uniqueness.DEBOUNCE, *held, task.payload, task.run_at, now)
            if replaced:
                holders[task.uniqueness] = replaced[0]
            elif holder["id"] not in new_ids:
                await c.execute(uniqueness.LET_GO, *held)
                del holders[task.uniqueness]

        def found(task: NewTask) -> Row | None:
            if task.idempotency_key is not None and task.idempotency in existing:
                return existing[task.idempotency]
            return holders.get(task.uniqueness) if task.unique_key is not None else None

        lost = [t for t in skipped if found(t) is None]  # key's task deleted, or lapsed
        retried = iter(await self._insert_on(c, lost) if lost else [])
        return [
            (TaskRecord.of_inserted(task), True)
            if task.id in new_ids
            else (TaskRecord.from_row(row), False)
            if (row := found(task)) is not None
            else next(retried)
            for task in tasks
        ]

    async def _existing(
        self, c: Conn, tasks: Sequence[NewTask], column: str, pair: str
    ) -> dict[tuple[str, str | None], Row]:
        """The rows holding ``tasks``' keys (``column``: ``idempotency_key`` or the
        active holders of ``unique_key``), by ``(namespace, key)`` (``pair``, the
        :class:`NewTask` property giving it)."""
        wanted = {key for task in tasks if (key := getattr(task, pair))[1] is not None}
        if not wanted:
            return {}
        namespaces, keys = zip(*wanted, strict=True)
        active = f" AND {uniqueness.HOLDING}" if column == "unique_key" else ""
        found = await c.fetch(
            f"SELECT * FROM tasks WHERE namespace {self.in_list('$1')} "
            f"AND {column} {self.in_list('$2')}{active}",
            self.list_param(set(namespaces)),
            self.list_param(set(keys)),
        )
        return {key: r for r in found if (key := (r["namespace"], r[column])) in wanted}

    async def get_task(self, task_id: str, namespace: str | None = None) -> TaskRecord:
        """The task; :class:`NotFound` if there is none, or it is not in ``namespace``
        (when given)."""
        only, more = _in_namespace(namespace)
        async with self.conn() as c:
            rows = await c.fetch(f"SELECT * FROM tasks WHERE id = $1{only}", task_id, *more)
        if not rows:
            raise NotFound(task_id)
        return TaskRecord.from_row(rows[0])

    async def get_attempts(self, task_id: str) -> list[Attempt]:
        async with self.conn() as c:
            rows = await c.fetch(
                "SELECT * FROM attempts WHERE task_id = $1 ORDER BY attempt", task_id
            )
        return [attempt_from_row(r) for r in rows]

    async def list_tasks(
        self,
        *,
        status: Status | None = None,
        queue: str | None = None,
        name: str | None = None,
        schedule_id: str | None = None,
        namespace: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> list[TaskRecord]:
        """Tasks newest first; ``cursor`` is the id of the last task of the previous page
        (:func:`chronoq.store.filters.page`)."""
        sql, args = page(self.dialect, status, queue, name, schedule_id, namespace, cursor, limit)
        async with self.conn() as c:
            rows = await c.fetch(sql, *args)
        return [TaskRecord.from_row(r) for r in rows]

    async def queue_stats(self, now: float, namespace: str | None = None) -> list[QueueStats]:
        """Counts per queue and status, at a cost that follows the active tasks
        (:mod:`chronoq.store.counts`)."""
        from chronoq.store import counts  # counts imports this module

        return await counts.queue_stats(self, now, namespace)

    # -- user actions ------------------------------------------------------------------------
    async def cancel_task(
        self, task_id: str, now: float, namespace: str | None = None
    ) -> TaskRecord:
        """Cancel a scheduled, queued, waiting or running task (of ``namespace``, when
        given: another namespace's is :class:`NotFound`). A running attempt is closed as
        ``cancelled`` at once and its worker is told to stop."""
        async with self.tx() as c:
            current = await self._current(c, task_id, namespace)
            lifecycle.CANCEL.check(task_id, current.status)
            rows = await c.fetch(
                f"UPDATE tasks SET {CANCEL} WHERE id = $1 AND status = $3 RETURNING *",
                task_id,
                now,
                current.status.value,
            )
            if current.status is Status.RUNNING:
                await c.execute(
                    f"UPDATE attempts SET {CANCEL_ATTEMPT} WHERE task_id = $1 AND "
                    "attempt = $3 AND finished_at IS NULL",
                    task_id,
                    now,
                    current.attempts,
                )
            doomed = await workflows.doom(self, c, [task_id], now) if current.workflow_id else []
        record = TaskRecord.from_row(rows[0])
        self.announce.changed([record], now, stopped=current.status is Status.RUNNING)
        self.announce.advanced(doomed, now)
        return record

    async def retry_task(
        self, task_id: str, now: float, namespace: str | None = None
    ) -> TaskRecord:
        """Send a failed or dead task (of ``namespace``, when given) back to its queue now,
        granting at least one attempt."""
        async with self.tx() as c:
            current = await self._current(c, task_id, namespace)
            lifecycle.RETRY.check(task_id, current.status)
            rows = await c.fetch(
                f"UPDATE tasks SET {RETRY} WHERE id = $1 AND status = $3 RETURNING *",
                task_id,
                now,
                current.status.value,
            )
            resumed = await workflows.resume(self, c, [task_id], now) if current.workflow_id else []
        record = TaskRecord.from_row(rows[0])
        self.announce.changed([record], now, requeued=True)
        self.announce.advanced(resumed, now)
        return record

    async def delete_task(self, task_id: str, namespace: str | None = None) -> None:
        """Discard a finished task (succeeded, dead or cancelled; of ``namespace``, when
        given) and its attempts."""
        async with self.tx() as c:
            current = await self._current(c, task_id, namespace)
            if current.status not in lifecycle.PURGE.sources:
                raise states.InvalidTransition(
                    task_id,
                    current.status,
                    Status.CANCELLED,
                    "only finished tasks can be discarded",
                )
            await c.execute(
                f"DELETE FROM tasks WHERE id = $1 AND {lifecycle.PURGE.where()}", task_id
            )

    async def _current(self, c: Conn, task_id: str, namespace: str | None = None) -> TaskRecord:
        """The task, locked for the transaction; the namespace is part of the WHERE
        clause, so a caller never acts on another namespace's task it was not shown."""
        only, more = _in_namespace(namespace)
        rows = await c.fetch(
            f"SELECT * FROM tasks WHERE id = $1{only}{self.lock_row}", task_id, *more
        )
        if not rows:
            raise NotFound(task_id)
        return TaskRecord.from_row(rows[0])

    # -- scheduler ---------------------------------------------------------------------------
    async def promote_due(
        self, now: float, limit: int = 1000, fence: Fence | None = None
    ) -> list[str]:
        """Move due scheduled tasks and due retries to ``queued``; returns each moved task's
        queue (so ``len()`` is the number moved)."""
        promote = lifecycle.PROMOTE
        async with self.tx() as c:
            await self.leases.check_fence(c, fence, now)
            rows = await c.fetch(
                f"UPDATE tasks SET {promote.to()}, updated_at = $1 WHERE id IN ("
                f"SELECT id FROM tasks WHERE {promote.where()} AND run_at <= $1 "
                f"ORDER BY run_at LIMIT $2{self.skip_locked}) "
                "RETURNING id, name, queue, attempts, schedule_id, priority, namespace",
                now,
                limit,
            )
        queues = [r["queue"] for r in rows]
        self.announce.promoted(rows, now)
        return queues

    async def next_due_at(
        self, partitions: Sequence[int] | None = None, tasks: bool = True, ahead: float = 0.0
    ) -> float | None:
        """The earliest time something becomes due: a waiting task (unless not ``tasks``)
        or a schedule's slot (of ``partitions`` only, if given) less ``ahead`` seconds
        (slots fired ahead)."""
        parts = "" if partitions is None else f"AND part IN ({', '.join(map(str, partitions))}) "
        waiting = f"SELECT MIN(run_at) AS t FROM tasks WHERE {lifecycle.PROMOTE.where()}"
        slots = (
            f"SELECT MIN(next_fire_at) - {float(ahead)!r} AS t FROM schedules "
            f"WHERE paused = 0 AND next_fire_at IS NOT NULL {parts}"
        )
        if partitions is not None and not partitions:
            slots = ""
        sql = " UNION ALL ".join(q for q in (waiting if tasks else "", slots) if q)
        if not sql:
            return None
        async with self.conn() as c:
            rows = await c.fetch(f"SELECT MIN(t) AS t FROM ({sql}) AS due")
        value = rows[0]["t"] if rows else None
        return None if value is None else float(value)

    async def expired_leases(self, now: float, limit: int = 500) -> list[TaskRecord]:
        """Running tasks whose worker stopped renewing the lease (it crashed or hung)."""
        async with self.conn() as c:
            rows = await c.fetch(
                f"SELECT * FROM tasks WHERE {lifecycle.REAP.where()} AND lease_expires_at < $1 "
                "ORDER BY lease_expires_at LIMIT $2",
                now,
                limit,
            )
        return [TaskRecord.from_row(r) for r in rows]

    async def deaths(self, task_ids: Sequence[str]) -> dict[str, int]:
        """How many finished attempts of each task died with their process (outcomes in
        :data:`chronoq.states.DIED`); tasks without such attempts are left out."""
        if not task_ids:
            return {}
        async with self.conn() as c:
            rows = await c.fetch(
                f"SELECT task_id, count(*) AS n FROM attempts WHERE task_id {self.in_list('$1')} "
                f"AND outcome {self.in_list('$2')} GROUP BY task_id",
                self.list_param(task_ids),
                self.list_param(states.DIED),
            )
        return {r["task_id"]: int(r["n"]) for r in rows}

    # -- workers -----------------------------------------------------------------------------
    async def claim(
        self,
        worker_id: str,
        queue: str,
        limit: int,
        now: float,
        lease: float,
        *,
        offer: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """Atomically take up to ``limit`` queued tasks of ``queue`` (highest priority, then
        oldest) and open an attempt for each. No two callers ever get the same attempt.
        The pick walks the ``tasks_ready`` index: O(limit), whatever the backlog. A paused
        queue gives nothing (checked in the same statement).
        ``offer`` (the worker's queues): the slots left free may take hand-offs of new tasks
        of those queues (PostgreSQL)."""
        keyed: list[TaskRecord] = []
        if queue in await self.limits.queues():  # keyed tasks: chronoq.store.limits
            keyed = await self.limits.claim(worker_id, queue, limit, now, lease)
            if len(keyed) >= limit:
                return keyed
        plain = await self._claim(
            _queue_pick(self.skip_locked),
            worker_id,
            now,
            lease,
            queue,
            limit - len(keyed),
            offer=offer,
        )
        return keyed + plain if keyed else plain

    async def claim_ids(
        self, worker_id: str, ids: Sequence[str], now: float, lease: float
    ) -> list[TaskRecord]:
        """Take these tasks if they are still queued (a broker delivered their ids); ids of
        tasks already taken, cancelled or gone, or of a paused queue, are skipped."""
        pick = _ids_pick(self.in_list("$4"), self.skip_locked)
        return await self._claim(pick, worker_id, now, lease, self.list_param(ids))

    async def _claim(
        self,
        pick: str,
        worker_id: str,
        now: float,
        lease: float,
        *args: Any,
        offer: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """Mark the rows chosen by the ``pick`` sub-select running (parameters from ``$4``)
        and open their attempts, in one transaction. (Hand-off offers are PostgreSQL's.)"""
        async with self.tx() as c:
            rows = await c.fetch(
                f"UPDATE tasks SET {lifecycle.CLAIM.to()}, attempts = attempts + 1, "
                "worker_id = $1, lease_expires_at = $2, updated_at = $3 "
                f"WHERE id IN ({pick}) RETURNING *",
                worker_id,
                now + lease,
                now,
                *args,
            )
            if rows:
                await c.executemany(
                    "INSERT INTO attempts (task_id, attempt, worker_id, started_at) "
                    "VALUES ($1, $2, $3, $4)",
                    [(r["id"], r["attempts"], worker_id, now) for r in rows],
                )
        return await self.with_inputs(rows, now)

    async def release(self, worker_id: str, tasks: Sequence[TaskRecord]) -> None:
        """Give back tasks handed to a worker that stops before starting them: queued
        again, the attempt they were handed with undone."""
        release = lifecycle.RELEASE
        async with self.tx() as c:
            for task in tasks:
                rows = await c.fetch(
                    f"UPDATE tasks SET {release.to()}, attempts = attempts - 1, "
                    "worker_id = NULL, lease_expires_at = NULL WHERE id = $1 AND attempts = $2 "
                    f"AND {release.where()} AND worker_id = $3 RETURNING id",
                    task.id,
                    task.attempts,
                    worker_id,
                )
                if rows:
                    await c.execute(
                        "DELETE FROM attempts WHERE task_id = $1 AND attempt = $2",
                        task.id,
                        task.attempts,
                    )
        self.announce.released(task.queue for task in tasks)

    async def withdraw_offers(self, worker_id: str) -> None:
        """A stopping worker takes back its hand-off offers; once this returns, every task
        handed to it has reached it (PostgreSQL; none here)."""

    async def stale_queued(
        self, before: float, now: float, limit: int = 1000, queue: str | None = None
    ) -> list[tuple[str, str, int]]:
        """Queued tasks untouched since ``before``: (id, queue, priority). They are marked
        touched now, so a broker reconciler re-publishes each at most once per period.
        Paused queues' tasks are left out (nobody may claim them; resuming publishes them),
        and so are keyed ones (claimed from the store, never by id: store.limits).
        ``queue``: only that queue's."""
        only, args = ("AND queue = $4 ", (queue,)) if queue is not None else ("", ())
        async with self.tx() as c:
            rows = await c.fetch(
                "UPDATE tasks SET updated_at = $2 WHERE id IN (SELECT id FROM tasks "
                f"WHERE {lifecycle.is_(Status.QUEUED)} AND updated_at < $1 "
                f"AND concurrency_key IS NULL AND {not_paused('tasks.queue')} "
                f"{only}ORDER BY updated_at LIMIT $3{self.skip_locked}) "
                "RETURNING id, queue, priority",
                before,
                now,
                limit,
                *args,
            )
        return [(r["id"], r["queue"], r["priority"]) for r in rows]

    async def with_inputs(self, rows: Sequence[Row], now: float) -> list[TaskRecord]:
        """:meth:`claimed`, with the results of workflow nodes' parents put into their
        payloads (:func:`chronoq.store.workflows.add_inputs`); one read, only when a
        claimed row has parents."""
        tasks = self.claimed(rows, now)
        if any(r["parents"] for r in rows):
            by_id = {r["id"]: r["parents"] for r in rows}
            await workflows.add_inputs(self, [t for t in tasks if by_id[t.id]])
        return tasks

    def claimed(self, rows: Sequence[Row], now: float) -> list[TaskRecord]:
        """Decode claimed rows in run order and publish that they started."""
        return self.started([TaskRecord.from_row(r) for r in rows], now)

    def started(self, tasks: list[TaskRecord], now: float) -> list[TaskRecord]:
        """Put tasks a worker now holds in run order and publish that they started."""
        tasks.sort(key=lambda t: (-t.priority, t.run_at, t.id))
        self.announce.started(tasks, now)
        return tasks

    async def complete(
        self,
        completions: Sequence[Completion],
        fence: Fence | None = None,
        *,
        lapsed: float | None = None,
    ) -> None:
        """Record the end of attempts. Fenced: a report for an attempt that is no longer the
        task's running attempt (cancelled, or superseded after a lost lease) changes nothing.
        ``lapsed`` (the reaper): only attempts whose lease still ran out before that time,
        checked in the write itself, so a lease renewed since the reaper looked is kept."""
        if not completions:
            return
        live, advanced = await self._record(completions, fence, lapsed)
        self.announce.finished([x for x in completions if (x.task_id, x.attempt) in live])
        self.announce.advanced(advanced, completions[0].finished_at)

    async def _record(
        self, completions: Sequence[Completion], fence: Fence | None, lapsed: float | None = None
    ) -> tuple[set[tuple[str, int]], list[Row]]:
        """Write completions in one transaction; returns the (task, attempt) pairs that were
        still running, i.e. whose task row changed, and the workflow nodes this changed
        (:func:`chronoq.store.workflows.advance`, in the same transaction)."""
        transition = lifecycle.FINISH if lapsed is None else lifecycle.REAP
        ending(transition, completions)
        encoded = [(x, storable_json(x.result)) for x in completions]  # once for both rows
        async with self.tx() as c:
            await self.leases.check_fence(c, fence, completions[0].finished_at)
            expired, more = (
                ("", ()) if lapsed is None else (" AND lease_expires_at < $2", (lapsed,))
            )
            current = await c.fetch(
                f"SELECT id, attempts, workflow_id FROM tasks WHERE id {self.in_list('$1')} "
                f"AND {transition.where()}{expired}{self.lock_row}",
                self.list_param([x.task_id for x in completions]),
                *more,
            )
            live = {(r["id"], r["attempts"]) for r in current}
            nodes = {(r["id"], r["attempts"]) for r in current if r["workflow_id"] is not None}
            if lapsed is not None:  # a renewed lease: its attempt runs on, left open
                encoded = [(x, result) for x, result in encoded if (x.task_id, x.attempt) in live]
            await c.executemany(
                f"UPDATE tasks SET {transition.to_each('$3')}, run_at = COALESCE($4, run_at), "
                "result = $5, error = $6, updated_at = $7, lease_expires_at = NULL "
                f"WHERE id = $1 AND attempts = $2 AND {transition.where()}",
                [
                    (
                        x.task_id,
                        x.attempt,
                        x.status.value,
                        x.next_run_at,
                        result,
                        x.error,
                        x.finished_at,
                    )
                    for x, result in encoded
                    if (x.task_id, x.attempt) in live
                ],
            )
            await c.executemany(
                "UPDATE attempts SET finished_at = $3, outcome = $4, result = $5, error = $6, "
                "traceback = $7 WHERE task_id = $1 AND attempt = $2 AND finished_at IS NULL",
                [
                    (
                        x.task_id,
                        x.attempt,
                        x.finished_at,
                        x.outcome,
                        result,
                        x.error,
                        x.traceback,
                    )
                    for x, result in encoded
                ],
            )
            advanced = await self.advance(c, completions, nodes)
        return live, advanced

    async def advance(
        self, c: Conn, completions: Sequence[Completion], nodes: set[tuple[str, int]]
    ) -> list[Row]:
        """The workflow step of a completion write: ``nodes``, the (task, attempt) pairs
        of workflow nodes whose row it changed."""
        ended = [x for x in completions if (x.task_id, x.attempt) in nodes]
        return await workflows.advance(self, c, ended, ended[0].finished_at) if ended else []

    async def heartbeat(
        self, worker_id: str, task_ids: Sequence[str], lease_until: float
    ) -> set[str]:
        """Extend the leases of a worker's running tasks; returns the ids it no longer owns
        (cancelled, or reclaimed after the lease ran out), which it should stop."""
        if not task_ids:
            return set()
        async with self.conn() as c:
            rows = await c.fetch(
                "UPDATE tasks SET lease_expires_at = $1 WHERE worker_id = $2 "
                f"AND {lifecycle.is_(Status.RUNNING)} AND id {self.in_list('$3')} RETURNING id",
                lease_until,
                worker_id,
                self.list_param(task_ids),
            )
        return set(task_ids) - {r["id"] for r in rows}

    async def strays(
        self, worker_id: str, known: Sequence[str], lease_before: float
    ) -> list[TaskRecord]:
        """Tasks running under ``worker_id`` that it does not know of, whose lease runs out
        before ``lease_before`` (nobody renews it): handed to the worker by a notification
        that never reached it."""
        async with self.conn() as c:
            rows = await c.fetch(
                f"SELECT * FROM tasks WHERE {lifecycle.is_(Status.RUNNING)} "
                f"AND lease_expires_at < $1 AND worker_id = $2 AND NOT (id {self.in_list('$3')})",
                lease_before,
                worker_id,
                self.list_param(known),
            )
        return [TaskRecord.from_row(r) for r in rows]


@functools.lru_cache(maxsize=4)
def _queue_pick(skip_locked: str) -> str:
    """The ``tasks_ready`` walk a claim takes its ids from (queue ``$4``, ``$5`` of them,
    tasks without a concurrency key): built once per dialect, not per claim."""
    return (
        f"SELECT id FROM tasks WHERE {lifecycle.CLAIM.where()} AND queue = $4 "
        f"AND concurrency_key IS NULL AND {not_paused('$4')} ORDER BY priority DESC, "
        f"run_at, id LIMIT $5{skip_locked}"
    )


@functools.lru_cache(maxsize=4)
def _ids_pick(ids_in: str, skip_locked: str) -> str:
    """The pick of :meth:`Store.claim_ids`: the given ids (``ids_in``, the dialect's
    test of ``id`` against ``$4``) still claimable; built once per dialect."""
    return (
        f"SELECT id FROM tasks WHERE {lifecycle.CLAIM.where()} AND id {ids_in} "
        f"AND concurrency_key IS NULL AND {not_paused('tasks.queue')}{skip_locked}"
    )


def _in_namespace(namespace: str | None) -> tuple[str, tuple[str, ...]]:
    """The condition (``$2``) and parameter limiting a one-task query to ``namespace``;
    nothing for None (every namespace)."""
    return ("", ()) if namespace is None else (" AND namespace = $2", (namespace,))


def ending(transition: lifecycle.Transition, completions: Sequence[Completion]) -> None:
    """``ValueError`` unless every completion ends in a status ``transition`` reaches."""
    for x in completions:
        if not transition.ends_in(x.status):
            raise ValueError(f"{transition.name} cannot end task {x.task_id} in {x.status}")


def _submitted(spec: TaskCreate, now: float, namespace: str, payload: str | None = None) -> NewTask:
    """The new task of a submission made at ``now``."""
    return NewTask.of(
        spec,
        spec.due_at(now),
        now,
        spec.idempotency_key,
        namespace=namespace,
        payload=payload,
        unique_for=spec.unique_for,
        unique_key=spec.unique_key,
        debounce=spec.debounce is not None,
    )


@asynccontextmanager
async def opened(store: Store) -> AsyncIterator[Store]:
    """Open a store, apply migrations, and close it afterwards."""
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()
