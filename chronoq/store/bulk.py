"""Bulk retry and cancel: every task a :class:`~chronoq.store.filters.TaskFilter` selects,
changed in batches of short transactions, and the dead-letter queue grouped by error.

A batch locks up to ``limit`` matching rows past a cursor (the last id of the previous
batch, walking ``tasks_by_status (status, id)``), skipping rows another transaction
holds, and applies the same UPDATE a single retry or cancel does (:data:`~chronoq.store.
base.RETRY`, :data:`~chronoq.store.base.CANCEL`). Afterwards it does what the single action
does: publishes one event per task, wakes the workers of the queues that got work, and
tells the workers of cancelled running tasks to stop them; for workflow nodes, a retry
resumes their descendants and a cancel fails them (:mod:`chronoq.store.workflows`), in
the batch's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from chronoq import lifecycle
from chronoq.lifecycle import Status, Transition
from chronoq.store import workflows
from chronoq.store.base import CANCEL, CANCEL_ATTEMPT, RETRY, Store
from chronoq.store.filters import TaskFilter
from chronoq.store.records import TaskRecord
from chronoq.store.retention import FINISHED

#: tasks one bulk transaction changes
BATCH = 500


@dataclass(frozen=True, slots=True)
class Action:
    """A user action on many tasks: its transition (the statuses it starts from) and the
    UPDATE it makes."""

    verb: str
    past: str
    transition: Transition
    update: str

    @property
    def allowed(self) -> frozenset[Status]:
        return frozenset(self.transition.sources)


RETRY_ACTION = Action("retry", "retried", lifecycle.RETRY, RETRY)
CANCEL_ACTION = Action("cancel", "cancelled", lifecycle.CANCEL, CANCEL)
ACTIONS = {a.verb: a for a in (RETRY_ACTION, CANCEL_ACTION)}


def check(action: Action, selection: TaskFilter) -> None:
    """``ValueError`` naming the problem unless ``selection`` picks one status ``action``
    may start from."""
    allowed = ", ".join(sorted(action.allowed))
    if selection.status is None:
        raise ValueError(f"name the status of the tasks to {action.verb} ({allowed})")
    if selection.status not in action.allowed:
        raise ValueError(
            f"{selection.status} tasks cannot be {action.past}; only {allowed} tasks can"
        )


async def count(store: Store, selection: TaskFilter) -> int:
    sql, args = selection.where(store.dialect)
    async with store.conn() as c:
        rows = await c.fetch(f"SELECT count(*) AS n FROM tasks WHERE {sql}", *args)
    return int(rows[0]["n"])


async def apply_batch(
    store: Store,
    action: Action,
    selection: TaskFilter,
    now: float,
    after: str | None = None,
    limit: int = BATCH,
) -> tuple[int, str | None]:
    """Apply ``action`` to the next ``limit`` selected tasks with ids above ``after``.
    Returns how many changed and the cursor for the next batch (None: nothing is left)."""
    check(action, selection)
    status = selection.status
    assert status is not None
    sql, args = selection.where(store.dialect)
    if after is not None:
        args.append(after)
        sql += f" AND id > ${len(args)}"
    async with store.tx() as c:
        picked = await c.fetch(
            f"SELECT id FROM tasks WHERE {sql} ORDER BY id "
            f"LIMIT ${len(args) + 1}{store.skip_locked}",
            *args,
            limit,
        )
        if not picked:
            return 0, None
        ids = store.list_param([r["id"] for r in picked])
        rows = await c.fetch(
            f"UPDATE tasks SET {action.update} WHERE id {store.in_list('$1')} "
            "AND status = $3 RETURNING *",
            ids,
            now,
            status.value,
        )
        if action is CANCEL_ACTION and status is Status.RUNNING:
            await c.execute(
                f"UPDATE attempts SET {CANCEL_ATTEMPT} WHERE task_id {store.in_list('$1')} "
                "AND finished_at IS NULL AND attempt = "
                "(SELECT t.attempts FROM tasks t WHERE t.id = attempts.task_id)",
                ids,
                now,
            )
        nodes = [r["id"] for r in rows if r["workflow_id"] is not None]
        step = workflows.resume if action is RETRY_ACTION else workflows.doom
        advanced = await step(store, c, nodes, now) if nodes else []
    changed = [TaskRecord.from_row(r) for r in rows]
    store.announce.changed(
        changed,
        now,
        requeued=action is RETRY_ACTION,
        stopped=action is CANCEL_ACTION and status is Status.RUNNING,
    )
    store.announce.advanced(advanced, now)
    return len(changed), str(picked[-1]["id"])


async def apply(
    store: Store,
    action: Action,
    selection: TaskFilter,
    now: float,
    limit: int | None = None,
    after: str | None = None,
    batch: int = BATCH,
) -> tuple[int, str | None]:
    """Apply ``action`` to every selected task (at most ``limit``) with an id above
    ``after``, ``batch`` per transaction. Returns how many changed and the cursor to go on
    from (None: nothing is left), so a task that changes back (retried, dead again) is
    not acted on twice by one walk."""
    done, cursor = 0, after
    while limit is None or done < limit:
        size = batch if limit is None else min(batch, limit - done)
        changed, cursor = await apply_batch(store, action, selection, now, cursor, size)
        done += changed
        if cursor is None:
            break
    return done, cursor


@dataclass(frozen=True, slots=True)
class DeadGroup:
    """Dead tasks of one handler and queue whose errors share a first line."""

    error: str
    name: str
    queue: str
    count: int
    newest: float


#: the error's first line, trimmed, at most 200 characters
_FIRST_LINE = {
    "sqlite": "substr(trim(substr(coalesce(error, ''), 1, "
    "instr(coalesce(error, '') || char(10), char(10)) - 1)), 1, 200)",
    "postgresql": "substr(trim(split_part(coalesce(error, ''), E'\\n', 1)), 1, 200)",
}


async def dead_letters(
    store: Store, namespace: str | None = None, queue: str | None = None, limit: int = 100
) -> list[DeadGroup]:
    """The dead-letter queue grouped by (first error line, handler, queue), largest group
    first: one GROUP BY over the dead rows of a status index (the ``tasks_finished``
    partial index, or ``tasks_by_status``), never a scan of the table."""
    sql, args = TaskFilter(Status.DEAD, queue, namespace=namespace).where(store.dialect)
    line = _FIRST_LINE[store.dialect]
    async with store.conn() as c:
        rows = await c.fetch(
            f"SELECT {line} AS line, name, queue, count(*) AS n, max(updated_at) AS newest "
            f"FROM tasks WHERE {FINISHED} AND {sql} GROUP BY {line}, name, queue "
            f"ORDER BY n DESC, newest DESC LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
    return [
        DeadGroup(str(r["line"]), r["name"], r["queue"], int(r["n"]), float(r["newest"]))
        for r in rows
    ]
