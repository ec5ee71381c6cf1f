"""Workflows in the store: a workflow row, its nodes (tasks) and edges (migration 0016).

A node waits ``blocked`` with ``waiting`` = its number of parents. The transaction that
records a parent's success decrements the counter of that parent's children
(:func:`advance`, called from the store's completion paths) and, in the same transaction,
moves those that reached 0 to ``queued`` with an UPDATE conditioned on ``blocked`` and
``waiting = 0``: under the child's row lock only one parent's transaction sees it reach 0,
so a node is enqueued exactly once however its parents finish — and the work per
completion is one indexed probe per child, never a poll. A death (or a cancel) moves every
blocked descendant to ``upstream_failed``; a retry of the dead node puts back to
``blocked`` those whose other parents are all alive (:func:`resume`).

Parents' results reach a child when it is claimed, not when it is enqueued
(:func:`add_inputs`): a succeeded task's result never changes, so reading it at claim time
gives the same payload, and it keeps a worker's completion write as short as it is for a
task outside a workflow (PostgreSQL's one-statement completion cannot see the result it
writes itself). Only claimed rows with parents pay the one extra read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chronoq import lifecycle
from chronoq.dag import Workflow, WorkflowCreate, WorkflowNodeState, overall
from chronoq.ids import new_id
from chronoq.lifecycle import Status
from chronoq.models import to_datetime
from chronoq.store.records import (
    PG_TYPES,
    TASK_COLUMN_TYPES,
    Completion,
    Conn,
    NewTask,
    NotFound,
    Row,
    TaskRecord,
    dumps,
    loads,
)

if TYPE_CHECKING:
    from chronoq.store.base import Store

#: a node's row: a new task's columns and its place in the workflow, with their types
_NODE_TYPES = {
    **{column: PG_TYPES[kind] for column, kind in TASK_COLUMN_TYPES.items()},
    "workflow_id": "text",
    "node": "text",
    "parents": "int",
    "waiting": "int",
}
_EDGE_TYPES = {"parent": "text", "child": "text", "arg": "text", "position": "int"}


async def _insert(
    store: Store, c: Conn, table: str, types: dict[str, str], rows: list[Any]
) -> None:
    """Insert ``rows`` into ``table``: on PostgreSQL one statement of one array per
    column (10,000 rows in one round trip), elsewhere one prepared statement per row."""
    into = f"INSERT INTO {table} ({', '.join(types)}) "
    if store.dialect == "postgresql":
        arrays = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(types.values(), start=1))
        columns = [list(column) for column in zip(*rows, strict=True)]
        await c.execute(f"{into}SELECT * FROM unnest({arrays})", *columns)
    else:
        values = ", ".join(f"${i}" for i in range(1, len(types) + 1))
        await c.executemany(f"{into}VALUES ({values})", rows)


#: what the announcements of nodes changed by a workflow step need
CHANGED = "id, name, queue, attempts, schedule_id, priority, namespace, status"
#: statuses of a parent that keep its children from running
_STOPPED = (Status.DEAD, Status.CANCELLED, Status.UPSTREAM_FAILED)


class WorkflowNotFound(NotFound):
    """No workflow has this id (in the caller's namespace)."""


@dataclass(frozen=True, slots=True)
class Started:
    """A workflow just stored: its row and its nodes' tasks (for the announcements)."""

    workflow: Workflow
    tasks: list[NewTask]
    ids: dict[str, str]  # node id -> task id


async def create(
    store: Store, spec: WorkflowCreate, now: float, namespace: str = "default"
) -> Started:
    """Store a workflow (already checked by its model) in one transaction: the nodes
    without parents queued, the others blocked (:data:`lifecycle.PLAN`)."""
    workflow_id = new_id()
    ids = {node.id: new_id() for node in spec.nodes}
    parents: dict[str, int] = {node.id: 0 for node in spec.nodes}
    for edge in spec.edges:
        parents[edge.child] += 1
    tasks, rows = [], []
    for node in spec.nodes:
        task = replace(NewTask.of(node.task, now, now, namespace=namespace), id=ids[node.id])
        if parents[node.id]:
            task = replace(task, status=Status.BLOCKED)
        assert lifecycle.PLAN.ends_in(task.status)
        tasks.append(task)
        rows.append((*task.values(), workflow_id, node.id, parents[node.id], parents[node.id]))
    outputs = [ids[n] for n in spec.sinks()]
    collect = spec.collect or len(outputs) != 1
    async with store.tx() as c:
        await c.execute(
            "INSERT INTO workflows (id, namespace, name, created_at, outputs, collect, size) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            workflow_id,
            namespace,
            spec.name,
            now,
            dumps(outputs),
            int(collect),
            len(tasks),
        )
        await _insert(store, c, "tasks", _NODE_TYPES, rows)
        if spec.edges:
            edges = [(ids[e.parent], ids[e.child], e.keyword, e.position) for e in spec.edges]
            await _insert(store, c, "workflow_edges", _EDGE_TYPES, edges)
    store.inserted(tasks)
    counts: dict[Status, int] = {}
    for task in tasks:
        counts[task.status] = counts.get(task.status, 0) + 1
    workflow = Workflow(
        id=workflow_id,
        name=spec.name,
        namespace=namespace,
        status=overall(counts),
        created_at=to_datetime(now),
        size=len(tasks),
        counts=counts,
        outputs=outputs,
        collect=collect,
    )
    return Started(workflow, tasks, ids)


# -- the completion hook ---------------------------------------------------------------------
async def advance(store: Store, c: Conn, finished: Sequence[Completion], now: float) -> list[Row]:
    """Inside the transaction recording ``finished`` (attempts of workflow nodes whose task
    row changed): unblock the children whose last parent succeeded, doom the descendants
    of the dead. Returns the rows changed (:data:`CHANGED`), to announce after commit."""
    dead = [x.task_id for x in finished if x.status is Status.DEAD]
    done = [x.task_id for x in finished if x.status is Status.SUCCEEDED]
    changed = await doom(store, c, dead, now) if dead else []
    if not done:
        return changed
    parents = store.list_param(done)
    children = f"SELECT child FROM workflow_edges WHERE parent {store.in_list('$1')}"
    if store.lock_row:  # take the children's locks in one order: no deadlock between parents
        await c.fetch(
            f"SELECT id FROM tasks WHERE id IN ({children}) ORDER BY id{store.lock_row}", parents
        )
    await c.execute(
        "UPDATE tasks SET waiting = waiting - (SELECT count(*) FROM workflow_edges e "
        f"WHERE e.child = tasks.id AND e.parent {store.in_list('$1')}) "
        f"WHERE id IN ({children})",
        parents,
    )
    unblock = lifecycle.UNBLOCK
    changed += await c.fetch(
        f"UPDATE tasks SET {unblock.to()}, updated_at = $2 WHERE id IN ({children}) "
        f"AND {unblock.where()} AND waiting = 0 RETURNING {CHANGED}",
        parents,
        now,
    )
    return changed


def _pg_unblock() -> tuple[str, str]:
    """PostgreSQL's worker completion as one statement: the CTEs that follow its ``ended``
    (the finished rows: id, status, updated_at) to do :func:`advance`'s success half —
    children locked in id order, decremented, queued at 0 — and the tail of its final
    SELECT giving the unblocked rows after the ended ones (``status`` NULL for those)."""
    unblock = lifecycle.UNBLOCK
    reaches = f"{unblock.where('c.status')} AND c.waiting - k.n = 0"
    ctes = (
        "counted AS (SELECT e.child, count(*) AS n, max(d.updated_at) AS at "
        "FROM workflow_edges e JOIN ended d ON e.parent = d.id "
        f"WHERE {lifecycle.is_(Status.SUCCEEDED, 'd.status')} GROUP BY e.child), "
        "locked AS MATERIALIZED (SELECT id FROM tasks WHERE id IN (SELECT child FROM counted) "
        "ORDER BY id FOR UPDATE), "
        "unblocked AS (UPDATE tasks c SET waiting = c.waiting - k.n, "
        f"{unblock.to_each(f'CASE WHEN {reaches} THEN {unblock.value()} ELSE c.status END')}, "
        f"updated_at = CASE WHEN {reaches} THEN k.at ELSE c.updated_at END "
        "FROM counted k WHERE c.id = k.child AND c.id IN (SELECT id FROM locked) "
        "RETURNING c.id, c.attempts, c.name, c.queue, c.schedule_id, c.priority, "
        "c.namespace, c.status), "
    )
    tail = (
        ", NULL::text AS name, NULL::text AS queue, NULL::text AS schedule_id, "
        "NULL::int AS priority, NULL::text AS namespace, NULL::text AS status FROM ended "
        "UNION ALL SELECT id, attempts, NULL, name, queue, schedule_id, priority, namespace, "
        f"status FROM unblocked WHERE {lifecycle.is_(Status.QUEUED)}"
    )
    return ctes, tail


#: :func:`_pg_unblock`'s CTEs and SELECT tail
PG_UNBLOCK = _pg_unblock()


async def doom(store: Store, c: Conn, roots: Sequence[str], now: float) -> list[Row]:
    """Every blocked descendant of ``roots`` (dead or cancelled nodes) becomes
    ``upstream_failed`` (:data:`lifecycle.DOOM`)."""
    doom = lifecycle.DOOM
    return await c.fetch(
        f"UPDATE tasks SET {doom.to()}, updated_at = $2, error = $3 WHERE id IN ("
        "WITH RECURSIVE down(id) AS (SELECT child FROM workflow_edges "
        f"WHERE parent {store.in_list('$1')} UNION SELECT e.child FROM workflow_edges e "
        "JOIN down ON e.parent = down.id) SELECT id FROM down) "
        f"AND {doom.where()} RETURNING {CHANGED}",
        store.list_param(roots),
        now,
        "an upstream node died or was cancelled",
    )


async def resume(store: Store, c: Conn, task_ids: Sequence[str], now: float) -> list[Row]:
    """Inside a retry of workflow nodes ``task_ids``: their upstream_failed descendants
    whose parents are all alive again wait for them (``blocked``) once more, level by
    level."""
    resume = lifecycle.RESUME
    stopped = store.list_param(_STOPPED)
    changed: list[Row] = []
    frontier = list(task_ids)
    while frontier:
        rows = await c.fetch(
            f"UPDATE tasks SET {resume.to()}, updated_at = $3, error = NULL WHERE id IN ("
            f"SELECT child FROM workflow_edges WHERE parent {store.in_list('$1')}) "
            f"AND {resume.where()} AND NOT EXISTS (SELECT 1 FROM workflow_edges e "
            f"JOIN tasks p ON p.id = e.parent WHERE e.child = tasks.id "
            f"AND p.status {store.in_list('$2')}) RETURNING {CHANGED}",
            store.list_param(frontier),
            stopped,
            now,
        )
        changed += rows
        frontier = [r["id"] for r in rows]
    return changed


async def add_inputs(store: Store, tasks: Sequence[TaskRecord]) -> None:
    """Put the results of the claimed ``tasks``' parents into their payloads (each task
    here has parents, all succeeded: it was unblocked)."""
    by_id = {t.id: t for t in tasks}
    async with store.conn() as c:
        rows = await c.fetch(
            "SELECT e.child, e.arg, e.position, t.result FROM workflow_edges e "
            f"JOIN tasks t ON t.id = e.parent WHERE e.child {store.in_list('$1')}",
            store.list_param(by_id),
        )
    lists: dict[tuple[str, str], dict[int, Any]] = {}
    for row in rows:
        value = loads(row["result"])
        if row["position"] is None:
            by_id[row["child"]].payload[row["arg"]] = value
        else:
            lists.setdefault((row["child"], row["arg"]), {})[row["position"]] = value
    for (child, arg), items in lists.items():
        by_id[child].payload[arg] = [items[i] for i in sorted(items)]


# -- reading and cancelling ------------------------------------------------------------------
def _namespace(namespace: str | None, at: int) -> tuple[str, tuple[str, ...]]:
    return ("", ()) if namespace is None else (f" AND namespace = ${at}", (namespace,))


async def _row(store: Store, c: Conn, workflow_id: str, namespace: str | None) -> Row:
    only, more = _namespace(namespace, 2)
    rows = await c.fetch(f"SELECT * FROM workflows WHERE id = $1{only}", workflow_id, *more)
    if not rows:
        raise WorkflowNotFound(workflow_id)
    return rows[0]


def _workflow(row: Row, counts: dict[Status, int]) -> Workflow:
    return Workflow(
        id=row["id"],
        name=row["name"],
        namespace=row["namespace"],
        status=overall(counts),
        created_at=to_datetime(row["created_at"]),
        size=row["size"],
        counts=counts,
        outputs=loads(row["outputs"]),
        collect=bool(row["collect"]),
    )


async def get(store: Store, workflow_id: str, namespace: str | None = None) -> Workflow:
    """The workflow with every node's state, in the order the nodes were given."""
    async with store.conn() as c:
        row = await _row(store, c, workflow_id, namespace)
        nodes = await c.fetch(
            "SELECT id, node, name, status, attempts, result, error, waiting FROM tasks "
            "WHERE workflow_id = $1 ORDER BY id",
            workflow_id,
        )
        edges = await c.fetch(
            "SELECT e.parent, e.child FROM workflow_edges e JOIN tasks t ON t.id = e.child "
            "WHERE t.workflow_id = $1",
            workflow_id,
        )
    names = {n["id"]: n["node"] for n in nodes}
    parents: dict[str, list[str]] = {}
    for edge in edges:
        parents.setdefault(edge["child"], []).append(names[edge["parent"]])
    counts: dict[Status, int] = {}
    states = []
    for n in nodes:
        status = Status(n["status"])
        counts[status] = counts.get(status, 0) + 1
        states.append(
            WorkflowNodeState(
                id=n["node"],
                task_id=n["id"],
                name=n["name"],
                status=status,
                attempts=n["attempts"],
                parents=sorted(parents.get(n["id"], [])),
                waiting=n["waiting"],
                result=loads(n["result"]),
                error=n["error"],
            )
        )
    workflow = _workflow(row, counts)
    workflow.nodes = states
    return workflow


async def list_workflows(
    store: Store, namespace: str | None = None, cursor: str | None = None, limit: int = 50
) -> list[Workflow]:
    """Workflows newest first, each with its node counts; ``cursor``: the last id of the
    previous page."""
    where, args = [], []
    if namespace is not None:
        args.append(namespace)
        where.append(f"namespace = ${len(args)}")
    if cursor is not None:
        args.append(cursor)
        where.append(f"id < ${len(args)}")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    async with store.conn() as c:
        rows = await c.fetch(
            f"SELECT * FROM workflows {clause}ORDER BY id DESC LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        counted = (
            await c.fetch(
                "SELECT workflow_id, status, count(*) AS n FROM tasks "
                f"WHERE workflow_id {store.in_list('$1')} GROUP BY workflow_id, status",
                store.list_param([r["id"] for r in rows]),
            )
            if rows
            else []
        )
    counts: dict[str, dict[Status, int]] = {r["id"]: {} for r in rows}
    for r in counted:
        counts[r["workflow_id"]][Status(r["status"])] = int(r["n"])
    return [_workflow(r, counts[r["id"]]) for r in rows]


async def cancel(
    store: Store, workflow_id: str, now: float, namespace: str | None = None
) -> Workflow:
    """Cancel every node that has not finished (a running one's attempt is closed and its
    worker told to stop, as :meth:`Store.cancel_task` does)."""
    from chronoq.store.base import CANCEL, CANCEL_ATTEMPT

    cancel = lifecycle.CANCEL
    async with store.tx() as c:
        await _row(store, c, workflow_id, namespace)
        running = await c.fetch(
            f"SELECT id, attempts FROM tasks WHERE workflow_id = $1 AND "
            f"{lifecycle.is_(Status.RUNNING)}{store.lock_row}",
            workflow_id,
        )
        rows = await c.fetch(
            f"UPDATE tasks SET {CANCEL} WHERE workflow_id = $1 AND {cancel.where()} RETURNING *",
            workflow_id,
            now,
        )
        abandon = lifecycle.ABANDON
        rows += await c.fetch(
            f"UPDATE tasks SET {abandon.to()}, updated_at = $2 WHERE workflow_id = $1 "
            f"AND {abandon.where()} RETURNING *",
            workflow_id,
            now,
        )
        if running:
            await c.executemany(
                f"UPDATE attempts SET {CANCEL_ATTEMPT} WHERE task_id = $1 AND attempt = $3 "
                "AND finished_at IS NULL",
                [(r["id"], now, r["attempts"]) for r in running],
            )
    records = [TaskRecord.from_row(r) for r in rows]
    was_running = {r["id"] for r in running}
    store.announce.changed([t for t in records if t.id in was_running], now, stopped=True)
    store.announce.changed([t for t in records if t.id not in was_running], now)
    return await get(store, workflow_id, namespace)
