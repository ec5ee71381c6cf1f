"""PostgreSQL store: the distributed mode. A connection pool, ``FOR UPDATE SKIP LOCKED`` claims,
and a LISTEN connection that turns other processes' notifications into local wake-ups."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from chronoq import lifecycle
from chronoq.backoff import Outage
from chronoq.events import EventBus
from chronoq.notify import Hub, worker_channel
from chronoq.states import Status
from chronoq.store import workflows
from chronoq.store.base import Completion, Conn, Row, Store, TaskRecord, ending
from chronoq.store.leases import Fence
from chronoq.store.pauses import not_paused
from chronoq.store.records import (
    INSERT_TASK_COLUMNS,
    PG_TYPES,
    TASK_COLUMN_TYPES,
    TASK_COLUMNS,
    NewTask,
    storable_json,
)
from chronoq.store.schedules import Schedules
from chronoq.store.workers import WorkerRegistry

log = logging.getLogger("chronoq.store")

_MIGRATION_LOCK = 0x6368726F6E6F71  # "chronoq"
#: a CTE making its statement commit without waiting for the WAL flush. Only a worker's own
#: writes use it (claims, results): a database *server* crash can forget the last fraction
#: of a second of them, and those tasks run again (delivery is at-least-once anyway).
#: Submissions, cancellations and schedule changes always wait for the disk.
_RELAXED = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true))"
#: the PostgreSQL type of each column of :data:`chronoq.store.records.INSERT_TASK_COLUMNS`
_TASK_TYPES = {column: PG_TYPES[kind] for column, kind in TASK_COLUMN_TYPES.items()}
#: the columns of :data:`chronoq.store.records.INSERT_TASK_COLUMNS`, as arrays
_TASK_ROWS = (
    "SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_TASK_TYPES.values(), start=1))
    + ")"
)
#: the parameter holding a new task's queue
_QUEUE = f"${TASK_COLUMNS.index('queue') + 1}"
#: what a hand-off inserts instead of the submitted value when an offer was taken
_HANDED = {"status": lifecycle.HAND_OFF.value(), "attempts": "1"}


def _handoff_value(i: int, column: str) -> str:
    """Parameter ``$i`` (``column``) of a queued task's row, as a hand-off inserts it:
    status 'running' and attempts 1 when an offer was taken."""
    value = f"${i}::{_TASK_TYPES[column]}"
    taken = _HANDED.get(column)
    return (
        value
        if taken is None
        else (f"CASE WHEN offer.worker_id IS NULL THEN {value} ELSE {taken} END")
    )


#: what a hand-off's INSERT returns: the columns it may set otherwise than the new task
_HANDED_BACK = ("status", "attempts", "worker_id", "lease_expires_at")

#: a task submitted on its own, inserted straight into the hands of an idle worker whose
#: LISTEN connection is alive when one offers a slot for its queue (migration 0010; the
#: trigger opens the attempt and sends the row), else inserted queued as usual (always when
#: its queue is paused: :func:`chronoq.store.pauses.not_paused`). Parameters:
#: a queued :class:`chronoq.store.records.NewTask`'s values.
_HANDOFF = (
    "WITH offer AS (UPDATE offers o SET slots = o.slots - 1 FROM ("
    f"SELECT worker_id FROM offers WHERE {_QUEUE}::text = ANY(queues) AND slots > 0 "
    f"AND {not_paused(f'{_QUEUE}::text')} "
    "AND EXISTS (SELECT 1 FROM pg_stat_get_activity(offers.pid)) "
    "LIMIT 1 FOR UPDATE SKIP LOCKED) AS free WHERE o.worker_id = free.worker_id "
    "RETURNING o.worker_id, o.lease_seconds) "
    f"{INSERT_TASK_COLUMNS.removesuffix(')')}, worker_id, lease_expires_at) SELECT "
    + ", ".join(_handoff_value(i, column) for i, column in enumerate(TASK_COLUMNS, start=1))
    + f", offer.worker_id, ${TASK_COLUMNS.index('updated_at') + 1}::float8 "
    "+ offer.lease_seconds FROM (SELECT 1) AS one "
    "LEFT JOIN offer ON true ON CONFLICT DO NOTHING "
    "RETURNING " + ", ".join(_HANDED_BACK)
)
#: a claim's companion: offer the slots it left free for hand-offs ($5 limit, $6 the
#: worker's queues, $7 its LISTEN backend's pid)
_OFFER = (
    "offered AS (INSERT INTO offers (worker_id, queues, slots, lease_seconds, pid) "
    "SELECT $1, $6::text[], $5 - count(*), $2 - $3, $7::int FROM claimed "
    "ON CONFLICT (worker_id) DO UPDATE SET queues = excluded.queues, slots = excluded.slots, "
    "lease_seconds = excluded.lease_seconds, pid = excluded.pid), "
)


@functools.lru_cache(maxsize=32)
def _claim_sql(pick: str, offered: bool) -> str:
    """The claim statement around ``pick`` (a sub-select of ids, parameters from ``$4``):
    mark running, open the attempts, and with ``offered`` the :data:`_OFFER` of the slots
    left free. Built once per pick (the SQL text is the prepared statement's cache key)."""
    return (
        f"WITH {_RELAXED}, picked AS ({pick}), "
        f"claimed AS (UPDATE tasks t SET {lifecycle.CLAIM.to()}, "
        "attempts = t.attempts + 1, "
        "worker_id = $1, lease_expires_at = $2, updated_at = $3 FROM picked, relaxed "
        "WHERE t.id = picked.id RETURNING t.*), "
        f"{_OFFER if offered else ''}opened AS (INSERT INTO attempts (task_id, attempt, "
        "worker_id, started_at) SELECT id, attempts, $1, $3 FROM claimed) "
        "SELECT * FROM claimed"
    )


#: completion batches at least this large are planned for their own parameters. The plan
#: PostgreSQL caches for the statement after five runs is generic, costed with the
#: statistics of the moment; made while ``tasks`` looked tiny (a new deployment, the first
#: seconds of a burst) it joins the batch to ``tasks`` by a nested loop, whose time grows
#: with the square of the batch (2,000 results: 4.2 s instead of 0.1 s). A slow write
#: makes the next batch larger, so a worker fell ever further behind. Planning costs
#: ~0.6 ms, a few microseconds per result at this size; smaller batches keep the cached
#: plan (their worst case is bounded by the size)
CUSTOM_PLAN_ROWS = 128

#: ``t.status``, spelt so that no index on status can serve a test of it
_UNINDEXED_STATUS = "(t.status || '')"


@functools.lru_cache(maxsize=2)
def _complete_sql(unblocking: bool) -> str:
    """A worker's completions as one statement: the task rows (attempt-fenced), the
    offer's slots given back, the attempts closed; ``unblocking``: and the workflow
    children of the nodes that succeeded (:data:`chronoq.store.workflows.PG_UNBLOCK`).
    Parameters: one array per :class:`Completion` field written."""
    finish = lifecycle.FINISH
    step, tail = workflows.PG_UNBLOCK if unblocking else ("", " FROM ended")
    return (
        f"WITH {_RELAXED}, "
        "input AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[], "
        "$4::float8[], $5::text[], $6::text[], $7::float8[], $8::text[], $9::text[]) "
        "AS x(task_id, attempt, status, next_run_at, result, error, finished_at, "
        "outcome, traceback)), "
        f"ended AS (UPDATE tasks t SET {finish.to_each('i.status')}, "
        "run_at = COALESCE(i.next_run_at, t.run_at), result = i.result, "
        "error = i.error, updated_at = i.finished_at, lease_expires_at = NULL "
        "FROM input i, relaxed WHERE t.id = i.task_id AND t.attempts = i.attempt "
        # the status test is spelt so that no index on status can serve it: the plan a
        # worker caches in its first seconds (before the table has statistics) would
        # otherwise be a bitmap scan of all of tasks_leases, dead entries included, on
        # every completion; this way each row is a tasks_pkey probe
        f"AND {finish.where(_UNINDEXED_STATUS)} "
        "RETURNING t.id, t.attempts, t.worker_id, t.workflow_id, t.status, "
        "t.updated_at), "
        "freed AS (UPDATE offers o SET slots = o.slots + f.n FROM (SELECT worker_id, "
        "count(*) AS n FROM ended GROUP BY worker_id) AS f "
        "WHERE o.worker_id = f.worker_id), "
        f"{step}"
        # driven by the rows that ended (the planner takes them for one row), so each
        # attempt is an index probe even in a plan cached while the table was small
        # (joined to input instead: a hash join over a scan of all attempts)
        "closed AS (UPDATE attempts a SET finished_at = i.finished_at, "
        "outcome = i.outcome, result = i.result, error = i.error, "
        "traceback = i.traceback FROM ended e JOIN input i ON i.task_id = e.id "
        "AND i.attempt = e.attempts WHERE a.task_id = e.id AND a.attempt = e.attempts "
        "AND a.finished_at IS NULL) "
        f"SELECT id, attempts, workflow_id{tail}"
    )


def split_schema(url: str) -> tuple[str, str | None]:
    """Strip our own ``?schema=name`` option from a PostgreSQL URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


class _PgConn:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args))

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)


def _usable(conn: Any) -> bool:
    """Whether a pooled connection held across calls is still open (one that closed went
    back to its pool by itself: asyncpg then refuses to be asked)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """Pooled connections hold no session state (no LISTEN, SET or session locks), so skip
    asyncpg's reset query: one round trip less per store call."""


class _PgSchedules(Schedules):
    """Fired schedules moved by one statement."""

    async def move(self, c: Any, moves: Sequence[tuple[Any, ...]]) -> None:
        """One UPDATE from column arrays, instead of a statement per fired schedule."""
        if not moves:
            return
        ids, nexts, lasts, updated = zip(*moves, strict=True)
        await c.execute(
            "UPDATE schedules AS s SET next_fire_at = m.next_fire_at, "
            "last_fire_at = m.last_fire_at, updated_at = m.updated_at "
            "FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[]) "
            "AS m(id, next_fire_at, last_fire_at, updated_at) WHERE s.id = m.id",
            list(ids),
            list(nexts),
            list(lasts),
            list(updated),
        )


class _PgWorkers(WorkerRegistry):
    """Dead workers' hand-off offers dropped with them."""

    async def mark_dead(self, silent_since: float) -> list[str]:
        """Also drops the offers of dead workers (they are never taken, but pile up)."""
        dead = await super().mark_dead(silent_since)
        if dead:
            async with self.db.conn() as c:
                await c.execute("DELETE FROM offers WHERE worker_id = ANY($1::text[])", dead)
        return dead


class PostgresStore(Store):
    """Tasks in PostgreSQL (``postgresql://user@host/db[?schema=name]``)."""

    dialect = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    lock_row = " FOR UPDATE"
    schedules_class = _PgSchedules
    workers_class = _PgWorkers
    data_errors = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
    outage_errors = (
        *Store.outage_errors,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
        asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
        asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
        asyncpg.exceptions.PostgresSystemError,  # I/O error
    )

    def __init__(
        self,
        url: str,
        hub: Hub | None = None,
        events: EventBus | None = None,
        *,
        min_size: int = 2,
        max_size: int = 10,
        listen: bool = True,
    ) -> None:
        super().__init__(hub, events)
        self.url = url
        self.dsn, self.schema = split_schema(url)
        self.min_size, self.max_size, self.listen = min_size, max_size, listen
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._inserter: Any = None  # the group commit's own pooled connection
        self._inserting = False
        self._listen_lock = asyncio.Lock()
        self._channels: set[str] = set()
        self._listened: set[str] = set()  # channels the LISTEN connection has taken up
        self._listen_jobs: set[asyncio.Task[None]] = set()
        self._relisten_task: asyncio.Task[None] | None = None

    def sibling(self) -> PostgresStore:
        """One connection, no LISTEN: it only renews leases."""
        return PostgresStore(self.url, min_size=1, max_size=1, listen=False)

    def _settings(self) -> dict[str, str]:
        # jit off: every statement here is short, and a plan whose estimate passes
        # jit_above_cost (the queue counts' loose index scans are estimated at ~300,000)
        # spent ~30 ms compiling to run in 10 (GET /v1/queues at 1,000,000 rows)
        settings = {"application_name": "chronoq", "jit": "off"}
        if self.schema:
            settings["search_path"] = self.schema
        return settings

    async def open(self) -> None:
        if self.schema:
            conn = await asyncpg.connect(self.dsn)
            try:
                # two processes starting at once race inside CREATE SCHEMA IF NOT EXISTS
                # (a unique violation on pg_namespace): the migration lock orders them
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            server_settings=self._settings(),
            reset=_no_reset,
            timeout=5,
        )
        if self.listen:
            self.hub.watch(self._want)
            await asyncio.gather(*self._listen_jobs)  # channels already needed: listen now

    def _want(self, channel: str) -> None:
        """A subscriber needs ``channel``: LISTEN to it (in the background)."""
        if self._pool is None:
            return  # closed
        self._channels.add(channel)
        self._listen_jobs.add(asyncio.get_running_loop().create_task(self._listen(channel)))

    async def _listen(self, channel: str) -> None:
        """LISTEN on ``channel`` (opening the LISTEN connection first if need be), then wake
        its waiters: whatever was notified before the LISTEN took effect is looked at now."""
        try:
            async with self._listen_lock:
                if self._listener is None or self._listener.is_closed():
                    conn = await asyncpg.connect(self.dsn, server_settings=self._settings())
                    conn.add_termination_listener(self._on_listener_lost)
                    self._listener = conn
                await self._listener.add_listener(channel, self._on_notify)
                self._listened.add(channel)
            self.hub.wake(channel)
        except (OSError, asyncpg.PostgresError) as exc:
            self._on_listener_lost(None, f"LISTEN {channel} failed: {exc}")
        finally:
            self._listen_jobs.discard(asyncio.current_task())

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self.hub.dispatch(channel, payload)

    def _on_listener_lost(self, _conn: Any, why: str = "connection lost") -> None:
        self._listened.clear()
        if self._pool is None or self._relisten_task is not None:
            return  # closing, or already reconnecting
        log.warning("PostgreSQL LISTEN %s; reconnecting (polling meanwhile)", why)
        self._relisten_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        outage = Outage(
            "PostgreSQL LISTEN reconnect", log, first=0.1, cap=5.0, level=logging.WARNING
        )
        while self._pool is not None:
            try:
                async with self._listen_lock:
                    if self._listener is not None and not self._listener.is_closed():
                        self._listener.terminate()
                    conn = await asyncpg.connect(self.dsn, server_settings=self._settings())
                    for channel in sorted(self._channels):
                        await conn.add_listener(channel, self._on_notify)
                    conn.add_termination_listener(self._on_listener_lost)
                    self._listener = conn
                    self._listened = set(self._channels)
            except (OSError, asyncpg.PostgresError) as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.over()
            log.info("PostgreSQL LISTEN connection restored")
            self._relisten_task = None
            self.hub.wake_all()  # notifications may have been missed meanwhile
            return

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the LISTEN connection (None when not listening)."""
        return None if self._listener is None else int(self._listener.get_server_pid())

    def _hearing(self, channel: str) -> int | None:
        """The LISTEN backend's pid if it is listening to ``channel`` right now."""
        listener = self._listener
        if channel not in self._listened or listener is None or listener.is_closed():
            return None
        return int(listener.get_server_pid())

    async def close(self) -> None:
        self.hub.unwatch(self._want)
        for job in [self._relisten_task, *self._listen_jobs]:
            if job is not None:
                job.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            if self._inserter is not None and not self._inserting:
                inserter, self._inserter = self._inserter, None
                await pool.release(inserter)
            await pool.close()  # waits for a write in flight to give its connection back
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[_PgConn]:
        async with self._require().acquire() as conn:
            yield _PgConn(conn)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[_PgConn]:
        async with self._require().acquire() as conn, conn.transaction():
            yield _PgConn(conn)

    def rows_source(self, tasks: Sequence[NewTask]) -> tuple[str, list[Any]]:
        """One array per column: the same statement text for any number of rows, so it is
        prepared once per connection and reused."""
        rows = [task.values() for task in tasks]
        return _TASK_ROWS, [list(column) for column in zip(*rows, strict=True)]

    def in_list(self, placeholder: str) -> str:
        return f"= ANY({placeholder}::text[])"

    def list_param(self, values: Iterable[str]) -> Any:
        return list(values)

    async def applied_migrations(self) -> set[int]:
        async with self.tx() as c:
            await c.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            rows = await c.fetch("SELECT version FROM schema_migrations")
        return {r["version"] for r in rows}

    async def apply_migration(self, version: int, name: str, sql: str) -> None:
        async with self._require().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                return
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, time.time()
            )

    @asynccontextmanager
    async def _insert_conn(self) -> AsyncIterator[_PgConn]:
        """The group commit's writes never overlap, so they keep one pooled connection to
        themselves rather than take one and give it back each time (asyncpg hands it back
        through a task of its own: a hop before the caller hears back)."""
        pool = self._require()
        conn = self._inserter
        if conn is None or not _usable(conn):
            if conn is not None:
                await pool.release(conn)  # broken (the server restarted): the pool drops it
            conn = self._inserter = await pool.acquire()
        self._inserting = True
        try:
            yield _PgConn(conn)
        except asyncpg.PostgresError:
            raise  # the statement failed, not the connection
        except BaseException:  # cut off mid-statement: never reuse that connection
            self._inserter = None
            await pool.release(conn)
            raise
        finally:
            self._inserting = False
            if self._pool is None and self._inserter is conn:  # the store closed meanwhile
                self._inserter = None
                await pool.release(conn)

    async def _insert_on(self, c: Conn, tasks: Sequence[NewTask]) -> list[tuple[TaskRecord, bool]]:
        """A queued task on its own goes to an idle worker if one offers (:data:`_HANDOFF`);
        batches, and a key seen before, take the general path."""
        if len(tasks) == 1 and tasks[0].status is Status.QUEUED and not tasks[0].concurrency_key:
            inserted = await c.fetch(_HANDOFF, *tasks[0].values())
            if inserted:
                row = inserted[0]
                record = TaskRecord.of_inserted(tasks[0], *(row[k] for k in _HANDED_BACK))
                return [(record, True)]
        return await super()._insert_on(c, tasks)

    async def _claim(
        self,
        pick: str,
        worker_id: str,
        now: float,
        lease: float,
        *args: Any,
        offer: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """One round trip: pick, mark running and open the attempts in a single statement,
        committed without waiting for the WAL flush (:data:`_RELAXED`). With ``offer``
        (the worker's queues), the same statement offers the slots left free for hand-offs
        (:data:`_OFFER`), if this process hears the worker's channel."""
        pid = self._hearing(worker_channel(worker_id)) if offer else None
        async with self.conn() as c:
            rows = await c.fetch(
                _claim_sql(pick, pid is not None),
                worker_id,
                now + lease,
                now,
                *args,
                *(() if pid is None else (offer, pid)),
            )
        return await self.with_inputs(rows, now)

    async def withdraw_offers(self, worker_id: str) -> None:
        """Delete the offer, then make sure every hand-off made before has been heard: a
        hand-off that took the offer committed before the DELETE could, and the LISTEN
        connection delivers what was committed before it answers a query."""
        async with self.conn() as c:
            await c.execute("DELETE FROM offers WHERE worker_id = $1", worker_id)
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                await self._listener.execute("SELECT 1")

    async def _record(
        self, completions: Sequence[Completion], fence: Fence | None, lapsed: float | None = None
    ) -> tuple[set[tuple[str, int]], list[Row]]:
        """A worker's completions in one statement (one round trip, one relaxed commit),
        which also gives their slots back to the worker's hand-off offer; the leader's
        fenced ones take the general path, which locks the lease row. When some are of
        workflow nodes, the statement and the workflow step share one transaction."""
        if fence is not None or lapsed is not None:
            return await super()._record(completions, fence, lapsed)
        ending(lifecycle.FINISH, completions)
        columns = list(
            zip(
                *(
                    (
                        x.task_id,
                        x.attempt,
                        x.status.value,
                        x.next_run_at,
                        storable_json(x.result),
                        x.error,
                        x.finished_at,
                        x.outcome,
                        x.traceback,
                    )
                    for x in completions
                ),
                strict=True,
            )
        )
        nodes = [x for x in completions if x.task is not None and x.task.workflow_id]
        # a workflow node's success unblocks its children in this statement; a death
        # (rare) dooms its descendants in a second one, in the same transaction
        dying = any(x.status is Status.DEAD for x in nodes)
        unblocking = bool(nodes) and not dying
        large = len(completions) >= CUSTOM_PLAN_ROWS
        async with self.tx() if dying or large else self.conn() as c:
            if large:
                await c.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            rows = await c.fetch(_complete_sql(unblocking), *(list(column) for column in columns))
            advanced = [r for r in rows if unblocking and r["status"] is not None]
            rows = [r for r in rows if not unblocking or r["status"] is None]
            if dying:
                ended = {(r["id"], r["attempts"]) for r in rows if r["workflow_id"] is not None}
                advanced = await self.advance(c, completions, ended)
        return {(r["id"], r["attempts"]) for r in rows}, advanced


async def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    """Wait for PostgreSQL to accept connections (used by process start-up)."""
    dsn, _ = split_schema(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("waiting for PostgreSQL: %s", exc)
            await asyncio.sleep(1)
