"""Retention queries: find, count and delete finished tasks older than a cut-off.

Every query names one status and one queue and walks the ``tasks_finished`` partial index
(migration 0014) over ``updated_at`` - the time a finished task finished. A batch is one
short transaction: lock up to ``limit`` rows past a cursor (skipping rows another
transaction holds), hand them to the caller (the export), delete them. Their attempts go
with them (on PostgreSQL one statement-level trigger per DELETE, migration 0025; on SQLite
``ON DELETE CASCADE``). The cursor means rows a filter leaves out (another
namespace or name) are read once per purge, not once per batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chronoq import lifecycle
from chronoq.lifecycle import TERMINAL, Status
from chronoq.models import Attempt
from chronoq.store.base import Store
from chronoq.store.filters import TaskFilter
from chronoq.store.records import Conn, Row, TaskRecord, attempt_from_row

#: the statuses retention may delete (:data:`chronoq.lifecycle.PURGE`), spelled as the
#: ``tasks_finished`` index's predicate: every query repeats it, so SQLite (which matches it
#: word for word) and PostgreSQL's generic plans (where the status is a parameter) both use
#: the partial index
FINISHED = lifecycle.PURGE.where()


@dataclass(frozen=True, slots=True)
class Expired:
    """Finished tasks of ``status`` in ``queue`` that finished before ``before`` (epoch
    seconds), optionally only those of ``namespace`` and of handler ``name``."""

    status: Status
    queue: str
    before: float
    namespace: str | None = None
    name: str | None = None

    def where(self, first: int = 1) -> tuple[str, list[Any]]:
        """The SQL condition (parameters from ``$first``) and its arguments."""
        if self.status not in TERMINAL:
            raise ValueError(
                f"{self.status} tasks are not finished; only "
                f"{', '.join(sorted(TERMINAL))} tasks can be purged"
            )
        chosen = TaskFilter(
            self.status, self.queue, self.name, self.namespace, updated_before=self.before
        )
        sql, args = chosen.where("sqlite", first)  # no error test: the same on both
        # workflow nodes go with their workflow (chronoq.store.workflows.purge)
        return f"{FINISHED} AND {sql} AND workflow_id IS NULL", args


async def finished_queues(store: Store, status: Status) -> list[str]:
    """The queues holding finished tasks of ``status``: a loose index scan (one index probe
    per queue), not a scan of the finished rows."""
    async with store.conn() as c:
        rows = await c.fetch(
            "WITH RECURSIVE q (queue) AS ("
            f"SELECT (SELECT min(queue) FROM tasks WHERE {FINISHED} "
            "AND status = $1) UNION ALL "
            f"SELECT (SELECT min(queue) FROM tasks WHERE {FINISHED} "
            "AND status = $1 AND queue > q.queue) FROM q WHERE q.queue IS NOT NULL) "
            "SELECT queue FROM q WHERE queue IS NOT NULL",
            status.value,
        )
    return [r["queue"] for r in rows]


async def count(store: Store, expired: Expired) -> int:
    sql, args = expired.where()
    async with store.conn() as c:
        rows = await c.fetch(f"SELECT count(*) AS n FROM tasks WHERE {sql}", *args)
    return int(rows[0]["n"])


#: ``await save(tasks)``: writes the tasks about to be deleted (API documents with attempts)
Save = Callable[[list[dict[str, Any]]], Awaitable[None]]


async def delete_batch(
    store: Store,
    expired: Expired,
    after: tuple[float, str] | None,
    limit: int,
    save: Save | None = None,
) -> tuple[int, tuple[float, str] | None]:
    """Delete the next ``limit`` expired tasks (and their attempts) past the cursor
    ``after`` (``(updated_at, id)`` of the previous batch's last row). Returns the number
    deleted and the cursor for the next batch (None: nothing is left).

    ``save`` gets the locked tasks with their attempts first, inside the transaction: the
    export writes them to disk there, so a task is never deleted before it is saved, and
    no task changes between being saved and being deleted."""
    if save is None and store.dialect == "postgresql":
        return await _delete_picked(store, expired, after, limit)
    sql, args = pick(store, expired, after, limit, "*" if save is not None else "id, updated_at")
    async with store.tx() as c:
        rows = await c.fetch(sql, *args)
        if not rows:
            return 0, None
        ids = store.list_param([r["id"] for r in rows])
        if save is not None:
            await save(await _with_attempts(store, c, rows, ids))
        deleted = await c.fetch(
            f"DELETE FROM tasks WHERE id {store.in_list('$1')} AND {FINISHED} RETURNING id",
            ids,
        )
    last = rows[-1]
    return len(deleted), (float(last["updated_at"]), str(last["id"]))


async def _delete_picked(
    store: Store, expired: Expired, after: tuple[float, str] | None, limit: int
) -> tuple[int, tuple[float, str] | None]:
    """PostgreSQL without an export: pick and delete in one statement (one round trip),
    committed without waiting for the disk (a batch forgotten by a server crash is
    deleted again by the next purge, as deleting expired rows is idempotent).

    The picked rows are deleted by their ``ctid`` (a TID scan), not found again through
    the primary key: the rows are locked by the pick, so their versions cannot move. A
    row updated after the statement's snapshot (and before the pick locked it) is not
    visible to the TID scan and stays: it is no longer the finished row the policy
    picked. Their attempts, logs and edges go with them in the statement's trigger
    (migration 0025)."""
    sql, args = pick(store, expired, after, limit, "ctid")
    async with store.conn() as c:
        rows = await c.fetch(
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)), "
            f"picked AS ({sql}) DELETE FROM tasks t "
            "WHERE t.ctid = ANY(ARRAY(SELECT ctid FROM picked, relaxed)) "
            f"AND {lifecycle.PURGE.where('t.status')} RETURNING t.id, t.updated_at",
            *args,
        )
    if not rows:
        return 0, None
    last = max((float(r["updated_at"]), str(r["id"])) for r in rows)
    return len(rows), last


def pick(
    store: Store, expired: Expired, after: tuple[float, str] | None, limit: int, columns: str
) -> tuple[str, list[Any]]:
    """The SELECT that locks a batch: one range of ``tasks_finished``, cursor included."""
    sql, args = expired.where()
    if after is not None:
        n = len(args)
        sql += f" AND (updated_at, id) > (${n + 1}, ${n + 2})"  # an index condition
        args += list(after)
    return (
        f"SELECT {columns} FROM tasks WHERE {sql} ORDER BY updated_at, id "
        f"LIMIT ${len(args) + 1}{store.skip_locked}"
    ), [*args, limit]


async def _with_attempts(
    store: Store, c: Conn, rows: Sequence[Row], ids: Any
) -> list[dict[str, Any]]:
    """The rows as API task documents (``GET /v1/tasks/{id}``) with their attempts."""
    found = await c.fetch(
        f"SELECT * FROM attempts WHERE task_id {store.in_list('$1')} ORDER BY task_id, attempt", ids
    )
    history: dict[str, list[Attempt]] = {}
    for row in found:
        history.setdefault(row["task_id"], []).append(attempt_from_row(row))
    return [
        TaskRecord.from_row(r).to_api(history.get(r["id"], [])).model_dump(mode="json")
        for r in rows
    ]
