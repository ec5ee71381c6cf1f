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

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chronoq import lifecycle, tracing
from chronoq.dag import Workflow, WorkflowCreate, WorkflowEdgeState, WorkflowNodeState
from chronoq.events import WorkflowEvent
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
_EDGE_TYPES = {
    "parent": "text",
    "child": "text",
    "arg": "text",
    "position": "int",
    "always": "int",
}


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
CHANGED = "id, name, queue, attempts, schedule_id, priority, namespace, status, workflow_id, node"
#: statuses of a parent that keep its children from running
_STOPPED = (Status.DEAD, Status.CANCELLED, Status.UPSTREAM_FAILED)
#: statuses a node can end in; a workflow is over when each node is in one
_ENDED = (Status.SUCCEEDED, *_STOPPED)
#: statuses of a node without children that fail its workflow
_FAILING = _STOPPED
#: a node without children ("a sink"): its workflow's result and its end depend on it
_SINK = "NOT EXISTS (SELECT 1 FROM workflow_edges s WHERE s.parent = {0})"
#: the columns of a workflow row an end (or a revival) announces
_ENDED_COLUMNS = "id, name, namespace, outcome, error"


def ended_row(row: Row, status: str | None = None, **extra: Any) -> dict[str, Any]:
    """A row for :meth:`Announcer.advanced` that announces a workflow event: ``status``
    (default: the row's ``outcome``) as ``workflow:<status>``."""
    return {
        "id": row["id"],
        "name": row["name"],
        "namespace": row["namespace"],
        "status": f"workflow:{status or row['outcome']}",
        "error": row["error"],
        **extra,
    }


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
    started = await _create(store, spec, now, namespace)
    assert started is not None  # no slot: nothing to conflict with
    return started


async def create_for_slot(
    store: Store,
    c: Conn,
    spec: WorkflowCreate,
    now: float,
    namespace: str,
    schedule_id: str,
    slot: float,
) -> Started | None:
    """In the firing transaction ``c``: the workflow of a schedule's slot, stored once per
    slot (None: that slot's workflow exists already), on a new trace per slot. The caller
    announces it after the commit (:func:`announce_started`)."""
    return await _create(store, spec, now, namespace, c, schedule_id, slot)


async def _create(
    store: Store,
    spec: WorkflowCreate,
    now: float,
    namespace: str,
    c: Conn | None = None,
    schedule_id: str | None = None,
    slot: float | None = None,
) -> Started | None:
    workflow_id = new_id()
    ids = {node.id: new_id() for node in spec.nodes}
    parents: dict[str, int] = {node.id: 0 for node in spec.nodes}
    children: set[str] = set()
    for edge in spec.edges:
        parents[edge.child] += 1
        children.add(edge.parent)
    context = (
        tracing.slot_traceparent(schedule_id, slot)
        if schedule_id is not None
        else tracing.current_traceparent()
    )
    steps = tracing.step_traceparents(context, spec.name, [(n.id, n.task.name) for n in spec.nodes])
    tasks, rows = [], []
    for index, node in enumerate(spec.nodes):
        task = replace(NewTask.of(node.task, now, now, namespace=namespace), id=ids[node.id])
        if parents[node.id]:
            task = replace(task, status=Status.BLOCKED)
        if steps is not None:
            task = replace(task, traceparent=steps[index])
        elif schedule_id is not None:
            task = replace(task, traceparent=context)
        assert lifecycle.PLAN.ends_in(task.status)
        tasks.append(task)
        rows.append((*task.values(), workflow_id, node.id, parents[node.id], parents[node.id]))
    outputs = [ids[n] for n in spec.sinks()]
    collect = spec.collect or len(outputs) != 1
    sinks = sum(1 for node in spec.nodes if node.id not in children)
    deadline = None if spec.timeout_seconds is None else now + spec.timeout_seconds
    async with store.tx() if c is None else _same(c) as t:
        inserted = await t.fetch(
            "INSERT INTO workflows (id, namespace, name, created_at, outputs, collect, size, "
            "sinks, deadline, schedule_id, slot) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (schedule_id, slot) DO NOTHING RETURNING id",
            workflow_id,
            namespace,
            spec.name,
            now,
            dumps(outputs),
            int(collect),
            len(tasks),
            sinks,
            deadline,
            schedule_id,
            slot,
        )
        if not inserted:
            return None
        await _insert(store, t, "tasks", _NODE_TYPES, rows)
        if spec.edges:
            edges = [
                (ids[e.parent], ids[e.child], e.keyword, e.position, int(e.always))
                for e in spec.edges
            ]
            await _insert(store, t, "workflow_edges", _EDGE_TYPES, edges)
    counts: dict[Status, int] = {}
    for task in tasks:
        counts[task.status] = counts.get(task.status, 0) + 1
    workflow = Workflow(
        id=workflow_id,
        name=spec.name,
        namespace=namespace,
        status="running",
        created_at=to_datetime(now),
        size=len(tasks),
        counts=counts,
        outputs=outputs,
        collect=collect,
        deadline=to_datetime(deadline),
        schedule_id=schedule_id,
    )
    started = Started(workflow, tasks, ids)
    if c is None:
        announce_started(store, [started], now)
    return started


def announce_started(store: Store, started: Sequence[Started], now: float) -> None:
    """After the commit: the nodes' task events and wake-ups, each workflow's ``started``."""
    store.inserted([t for s in started for t in s.tasks])
    store.announce.workflow(
        [
            WorkflowEvent(s.workflow.id, "started", now, s.workflow.namespace, s.workflow.name)
            for s in started
        ]
    )


class _same:
    """``async with`` over a connection already in a transaction (no new one)."""

    def __init__(self, c: Conn) -> None:
        self.c = c

    async def __aenter__(self) -> Conn:
        return self.c

    async def __aexit__(self, *exc: object) -> None:
        return None


# -- the completion hook ---------------------------------------------------------------------
async def advance(store: Store, c: Conn, finished: Sequence[Completion], now: float) -> list[Row]:
    """Inside the transaction recording ``finished`` (attempts of workflow nodes whose task
    row changed): unblock the children whose last parent succeeded, doom the descendants
    of the dead, end the workflows whose last sink succeeded. Returns the rows changed
    (:data:`CHANGED`, and :func:`ended_row` ones), to announce after commit."""
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
    return changed + await _sunk(store, c, done, now)


async def _sunk(store: Store, c: Conn, done: Sequence[str], now: float) -> list[Row]:
    """The sinks among the succeeded ``done`` count down their workflows' ``sinks``; a
    workflow brought to 0 succeeded (its :func:`ended_row`)."""
    found = await c.fetch(
        "SELECT workflow_id, count(*) AS n FROM tasks t "
        f"WHERE id {store.in_list('$1')} AND {_SINK.format('t.id')} GROUP BY workflow_id "
        "ORDER BY workflow_id",
        store.list_param(done),
    )
    ended = []
    for row in found:
        ended += await c.fetch(
            "UPDATE workflows SET sinks = sinks - $2, "
            "outcome = CASE WHEN sinks - $2 <= 0 AND outcome IS NULL THEN 'succeeded' "
            "ELSE outcome END, "
            "finished_at = CASE WHEN sinks - $2 <= 0 AND outcome IS NULL THEN $3 "
            f"ELSE finished_at END WHERE id = $1 RETURNING {_ENDED_COLUMNS}, sinks",
            row["workflow_id"],
            int(row["n"]),
            now,
        )
    return [ended_row(r) for r in ended if r["sinks"] == 0 and r["outcome"] == "succeeded"]


def _pg_unblock() -> tuple[str, str]:
    """PostgreSQL's worker completion as one statement: the CTEs that follow its ``ended``
    (the finished rows: id, status, updated_at, workflow_id) to do :func:`advance`'s
    success half — children locked in id order, decremented, queued at 0; the sinks'
    workflows counted down, locked in id order after the children — and the tail of its
    final SELECT giving the unblocked rows after the ended ones (``status`` NULL for
    those), then the workflows that succeeded (:func:`ended_row`'s shape)."""
    unblock = lifecycle.UNBLOCK
    reaches = f"{unblock.where('c.status')} AND c.waiting - k.n = 0"
    succeeded = lifecycle.is_(Status.SUCCEEDED, "d.status")
    last = "w.sinks - f.n <= 0 AND w.outcome IS NULL"
    ctes = (
        "counted AS (SELECT e.child, count(*) AS n, max(d.updated_at) AS at "
        f"FROM workflow_edges e JOIN ended d ON e.parent = d.id WHERE {succeeded} "
        "GROUP BY e.child), "
        "locked AS MATERIALIZED (SELECT id FROM tasks WHERE id IN (SELECT child FROM counted) "
        "ORDER BY id FOR UPDATE), "
        "unblocked AS (UPDATE tasks c SET waiting = c.waiting - k.n, "
        f"{unblock.to_each(f'CASE WHEN {reaches} THEN {unblock.value()} ELSE c.status END')}, "
        f"updated_at = CASE WHEN {reaches} THEN k.at ELSE c.updated_at END "
        "FROM counted k WHERE c.id = k.child AND c.id IN (SELECT id FROM locked) "
        "RETURNING c.id, c.attempts, c.name, c.queue, c.schedule_id, c.priority, "
        "c.namespace, c.status), "
        "sinking AS (SELECT d.workflow_id, count(*) AS n, max(d.updated_at) AS at "
        f"FROM ended d WHERE d.workflow_id IS NOT NULL AND {succeeded} "
        f"AND {_SINK.format('d.id')} GROUP BY d.workflow_id), "
        "sinks_locked AS MATERIALIZED (SELECT id FROM workflows WHERE id IN "
        "(SELECT workflow_id FROM sinking) AND (SELECT count(*) FROM locked) >= 0 "
        "ORDER BY id FOR UPDATE), "
        "sunk AS (UPDATE workflows w SET sinks = w.sinks - f.n, "
        f"outcome = CASE WHEN {last} THEN 'succeeded' ELSE w.outcome END, "
        f"finished_at = CASE WHEN {last} THEN f.at ELSE w.finished_at END "
        "FROM sinking f WHERE w.id = f.workflow_id AND w.id IN (SELECT id FROM sinks_locked) "
        "RETURNING w.id, w.name, w.namespace, w.sinks, w.outcome), "
    )
    tail = (
        ", NULL::text AS name, NULL::text AS queue, NULL::text AS schedule_id, "
        "NULL::int AS priority, NULL::text AS namespace, NULL::text AS status FROM ended "
        "UNION ALL SELECT id, attempts, NULL, name, queue, schedule_id, priority, namespace, "
        f"status FROM unblocked WHERE {lifecycle.is_(Status.QUEUED)} "
        "UNION ALL SELECT id, 0, NULL, name, NULL, NULL, NULL, namespace, "
        "'workflow:succeeded' FROM sunk WHERE sinks = 0 AND outcome = 'succeeded'"
    )
    return ctes, tail


#: :func:`_pg_unblock`'s CTEs and SELECT tail
PG_UNBLOCK = _pg_unblock()


async def doom(store: Store, c: Conn, roots: Sequence[str], now: float) -> list[Row]:
    """Every blocked descendant of ``roots`` (dead or cancelled nodes) along edges without
    ``always`` becomes ``upstream_failed`` (:data:`lifecycle.DOOM`); a child of theirs
    along an ``always`` edge counts that parent as done (queued when it was the last);
    a workflow one of whose sinks this stops fails (or is cancelled, when a root was
    cancelled)."""
    doom = lifecycle.DOOM
    doomed = await c.fetch(
        f"UPDATE tasks SET {doom.to()}, updated_at = $2, error = $3 WHERE id IN ("
        "WITH RECURSIVE down(id) AS (SELECT child FROM workflow_edges "
        f"WHERE parent {store.in_list('$1')} AND always = 0 UNION SELECT e.child "
        "FROM workflow_edges e JOIN down ON e.parent = down.id WHERE e.always = 0) "
        f"SELECT id FROM down) AND {doom.where()} RETURNING {CHANGED}",
        store.list_param(roots),
        now,
        "an upstream node died or was cancelled",
    )
    stopped = [*roots, *(r["id"] for r in doomed)]
    changed: list[Row] = [*doomed, *await _release(store, c, stopped, now)]
    return changed + await _fail(store, c, roots, stopped, now)


async def _release(store: Store, c: Conn, stopped: Sequence[str], now: float) -> list[Row]:
    """The ``always`` children of the ``stopped`` nodes that are still blocked count them
    as done: decremented, queued at 0 (:data:`lifecycle.UNBLOCK`)."""
    ids = store.list_param(stopped)
    children = f"SELECT child FROM workflow_edges WHERE parent {store.in_list('$1')} AND always = 1"
    unblock = lifecycle.UNBLOCK
    found = await c.fetch(
        f"SELECT id FROM tasks WHERE id IN ({children}) AND {unblock.where()} "
        f"ORDER BY id{store.lock_row}",
        ids,
    )
    if not found:
        return []
    await c.execute(
        "UPDATE tasks SET waiting = waiting - (SELECT count(*) FROM workflow_edges e "
        f"WHERE e.child = tasks.id AND e.always = 1 AND e.parent {store.in_list('$1')}) "
        f"WHERE id IN ({children}) AND {unblock.where()}",
        ids,
    )
    return await c.fetch(
        f"UPDATE tasks SET {unblock.to()}, updated_at = $2 WHERE id IN ({children}) "
        f"AND {unblock.where()} AND waiting <= 0 RETURNING {CHANGED}",
        ids,
        now,
    )


async def _fail(
    store: Store, c: Conn, roots: Sequence[str], stopped: Sequence[str], now: float
) -> list[Row]:
    """End the workflows (not ended yet) of the sinks among ``stopped``: ``cancelled``
    when a root was cancelled, else ``failed``."""
    rows = await c.fetch(
        "SELECT t.id, t.workflow_id, t.status, t.name, t.node, t.namespace FROM tasks t "
        f"WHERE t.id {store.in_list('$1')} AND t.workflow_id IS NOT NULL",
        store.list_param(roots),
    )
    cancelled = {r["workflow_id"] for r in rows if r["status"] == Status.CANCELLED.value}
    steps: list[Row] = [  # a cancelled root's step (a dead one's is its completion's)
        {
            "id": r["workflow_id"],
            "name": None,
            "namespace": r["namespace"],
            "status": "workflow:step_finished",
            "error": None,
            "node": r["node"],
            "task_id": r["id"],
            "task_name": r["name"],
            "step_status": r["status"],
        }
        for r in rows
        if r["status"] == Status.CANCELLED.value
    ]
    dead = {r["workflow_id"]: r for r in rows if r["status"] == Status.DEAD.value}
    sinks = await c.fetch(
        "SELECT DISTINCT workflow_id FROM tasks t "
        f"WHERE t.id {store.in_list('$1')} AND {_SINK.format('t.id')} "
        "AND t.workflow_id IS NOT NULL ORDER BY workflow_id",
        store.list_param(stopped),
    )
    ended: list[Row] = []
    for row in sinks:
        workflow_id = row["workflow_id"]
        outcome = "cancelled" if workflow_id in cancelled else "failed"
        cause = dead.get(workflow_id)
        error = (
            "a node was cancelled"
            if cause is None
            else f"node {cause['node']} ({cause['name']}) died"
        )
        ended += await c.fetch(
            "UPDATE workflows SET outcome = $2, finished_at = $3, error = $4 "
            f"WHERE id = $1 AND outcome IS NULL RETURNING {_ENDED_COLUMNS}",
            workflow_id,
            outcome,
            now,
            error,
        )
    return steps + [ended_row(r) for r in ended]


async def resume(store: Store, c: Conn, task_ids: Sequence[str], now: float) -> list[Row]:
    """Inside a retry of workflow nodes ``task_ids``: their upstream_failed descendants
    whose parents are all alive again wait for them (``blocked``) once more, level by
    level; ``always`` children still blocked wait for them again too; their workflows,
    when no sink is stopped any more, run again (``resumed``)."""
    resume = lifecycle.RESUME
    stopped = store.list_param(_STOPPED)
    changed: list[Row] = []
    frontier = list(task_ids)
    revived = list(task_ids)
    while frontier:
        rows = await c.fetch(
            f"UPDATE tasks SET {resume.to()}, updated_at = $3, error = NULL WHERE id IN ("
            f"SELECT child FROM workflow_edges WHERE parent {store.in_list('$1')} "
            f"AND always = 0) AND {resume.where()} AND NOT EXISTS (SELECT 1 FROM "
            "workflow_edges e JOIN tasks p ON p.id = e.parent WHERE e.child = tasks.id "
            f"AND e.always = 0 AND p.status {store.in_list('$2')}) RETURNING {CHANGED}",
            store.list_param(frontier),
            stopped,
            now,
        )
        changed += rows
        frontier = [r["id"] for r in rows]
        revived += frontier
    ids = store.list_param(revived)
    await c.execute(
        "UPDATE tasks SET waiting = waiting + (SELECT count(*) FROM workflow_edges e "
        f"WHERE e.child = tasks.id AND e.always = 1 AND e.parent {store.in_list('$1')}) "
        "WHERE id IN (SELECT child FROM workflow_edges "
        f"WHERE parent {store.in_list('$1')} AND always = 1) AND {lifecycle.is_(Status.BLOCKED)}",
        ids,
    )
    workflows = await c.fetch(
        f"SELECT DISTINCT workflow_id FROM tasks WHERE id {store.in_list('$1')} "
        "AND workflow_id IS NOT NULL ORDER BY workflow_id",
        store.list_param(task_ids),
    )
    for row in workflows:
        back = await c.fetch(
            "UPDATE workflows SET outcome = NULL, finished_at = NULL, error = NULL "
            "WHERE id = $1 AND outcome IS NOT NULL AND outcome <> 'succeeded' "
            "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = workflows.id "
            f"AND t.status {store.in_list('$2')} AND {_SINK.format('t.id')}) "
            f"RETURNING {_ENDED_COLUMNS}",
            row["workflow_id"],
            stopped,
        )
        changed += [ended_row(r, "resumed") for r in back]
    return changed


async def add_inputs(store: Store, tasks: Sequence[TaskRecord]) -> None:
    """Put the results of the claimed ``tasks``' parents into their payloads (each task
    here has parents, all ended: it was unblocked; a parent along an ``always`` edge that
    did not succeed gives null), and their traceparents into ``upstream`` (the run span
    links to them, :func:`chronoq.tracing.run_span`)."""
    by_id = {t.id: t for t in tasks}
    async with store.conn() as c:
        rows = await c.fetch(
            "SELECT e.child, e.arg, e.position, t.result, t.status, t.traceparent "
            "FROM workflow_edges e "
            f"JOIN tasks t ON t.id = e.parent WHERE e.child {store.in_list('$1')}",
            store.list_param(by_id),
        )
    lists: dict[tuple[str, str], dict[int, Any]] = {}
    upstream: dict[str, list[str]] = {}
    for row in rows:
        value = loads(row["result"]) if row["status"] == Status.SUCCEEDED.value else None
        if row["traceparent"]:
            upstream.setdefault(row["child"], []).append(row["traceparent"])
        if row["position"] is None:
            by_id[row["child"]].payload[row["arg"]] = value
        else:
            lists.setdefault((row["child"], row["arg"]), {})[row["position"]] = value
    for (child, arg), items in lists.items():
        by_id[child].payload[arg] = [items[i] for i in sorted(items)]
    for child, parents in upstream.items():
        by_id[child].upstream = tuple(parents)


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
        status=row["outcome"] or "running",
        created_at=to_datetime(row["created_at"]),
        size=row["size"],
        counts=counts,
        outputs=loads(row["outputs"]),
        collect=bool(row["collect"]),
        finished_at=to_datetime(row["finished_at"]),
        error=row["error"],
        deadline=to_datetime(row["deadline"]),
        schedule_id=row["schedule_id"],
    )


async def get(store: Store, workflow_id: str, namespace: str | None = None) -> Workflow:
    """The workflow with every node's state, in the order the nodes were given, and its
    edges."""
    async with store.conn() as c:
        row = await _row(store, c, workflow_id, namespace)
        nodes = await c.fetch(
            "SELECT id, node, name, status, attempts, result, error, waiting FROM tasks "
            "WHERE workflow_id = $1 ORDER BY id",
            workflow_id,
        )
        edges = await c.fetch(
            "SELECT e.parent, e.child, e.always FROM workflow_edges e "
            "JOIN tasks t ON t.id = e.child WHERE t.workflow_id = $1",
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
    workflow.edges = [
        WorkflowEdgeState(
            parent=names[e["parent"]], child=names[e["child"]], always=bool(e["always"])
        )
        for e in edges
    ]
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
    worker told to stop, as :meth:`Store.cancel_task` does); the workflow is cancelled."""
    await _stop(store, workflow_id, now, namespace, "cancelled", "cancelled by a user")
    return await get(store, workflow_id, namespace)


async def _stop(
    store: Store,
    workflow_id: str,
    now: float,
    namespace: str | None,
    outcome: str,
    error: str,
    *,
    only_unended: bool = False,
) -> bool:
    """Cancel the workflow's unfinished nodes and set its ``outcome`` (unless it ended
    before) in one transaction, then announce. ``only_unended``: do nothing to a workflow
    that ended already (a deadline passing). Returns whether it changed anything."""
    from chronoq.store.base import CANCEL, CANCEL_ATTEMPT

    cancel = lifecycle.CANCEL
    async with store.tx() as c:
        row = await _row(store, c, workflow_id, namespace)
        if only_unended and row["outcome"] is not None:
            return False
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
        ended = await c.fetch(
            "UPDATE workflows SET outcome = $2, finished_at = $3, error = $4 "
            f"WHERE id = $1 AND outcome IS NULL RETURNING {_ENDED_COLUMNS}",
            workflow_id,
            outcome,
            now,
            error,
        )
    records = [TaskRecord.from_row(r) for r in rows]
    was_running = {r["id"] for r in running}
    store.announce.changed([t for t in records if t.id in was_running], now, stopped=True)
    store.announce.changed([t for t in records if t.id not in was_running], now)
    store.announce.workflow(
        [
            *(
                WorkflowEvent(
                    workflow_id,
                    "step_finished",
                    now,
                    t.namespace,
                    node=t.node,
                    task_id=t.id,
                    task_name=t.name,
                    step_status=t.status.value,
                )
                for t in records
            ),
            *(
                WorkflowEvent(r["id"], r["outcome"], now, r["namespace"], r["name"], error=error)
                for r in ended
            ),
        ]
    )
    return bool(records or ended)


async def retry(
    store: Store, workflow_id: str, now: float, namespace: str | None = None
) -> Workflow:
    """Retry every dead (or failed, waiting for its backoff) node now, as a retry of each
    would (:meth:`Store.retry_task`), in one transaction: their ``upstream_failed``
    descendants wait for them again and the workflow runs again once no sink is stopped.
    Cancelled nodes stay cancelled."""
    from chronoq.store.base import RETRY

    async with store.tx() as c:
        await _row(store, c, workflow_id, namespace)
        rows = await c.fetch(
            f"UPDATE tasks SET {RETRY} WHERE workflow_id = $1 AND {lifecycle.RETRY.where()} "
            "RETURNING *",
            workflow_id,
            now,
        )
        resumed = await resume(store, c, [r["id"] for r in rows], now) if rows else []
    store.announce.changed([TaskRecord.from_row(r) for r in rows], now, requeued=True)
    store.announce.advanced(resumed, now)
    return await get(store, workflow_id, namespace)


# -- deadlines -------------------------------------------------------------------------------
async def time_out(store: Store, now: float, limit: int = 100) -> int:
    """Fail the workflows whose deadline passed (the scheduler's leader, each reap): their
    unfinished nodes are cancelled, running ones stopped; ``error`` says why. Returns how
    many it failed. One indexed probe when none is due (``workflows_by_deadline``)."""
    async with store.conn() as c:
        due = await c.fetch(
            "SELECT id, deadline, created_at FROM workflows WHERE outcome IS NULL "
            "AND deadline IS NOT NULL AND deadline <= $1 ORDER BY deadline LIMIT $2",
            now,
            limit,
        )
    failed = 0
    for row in due:
        seconds = row["deadline"] - row["created_at"]
        error = f"timed out: the workflow did not finish within {seconds:g} s"
        with contextlib.suppress(WorkflowNotFound):  # purged meanwhile
            failed += await _stop(store, row["id"], now, None, "failed", error, only_unended=True)
    return failed


# -- retention -------------------------------------------------------------------------------
#: a node's status -> the task status whose retention age keeps it
_KEPT_AS = {
    Status.SUCCEEDED: Status.SUCCEEDED,
    Status.CANCELLED: Status.CANCELLED,
    Status.DEAD: Status.DEAD,
    Status.UPSTREAM_FAILED: Status.DEAD,
}


async def purge(
    store: Store,
    age: Callable[[str, Status], float | None],
    now: float,
    limit: int = 500,
    namespace: str | None = None,
) -> int:
    """Delete the workflows retention no longer keeps, each whole (its row, nodes, their
    attempts and edges): a workflow goes once it ended, every node ended, and no node
    would be kept on its own — each node is kept ``age(queue, status)`` after the last
    node's end (``upstream_failed`` as ``dead``; None: forever). Returns the number
    deleted. Task purges leave workflow nodes to this (:mod:`chronoq.store.retention`)."""
    only, more = _namespace(namespace, 2)
    deleted = 0
    after = ""
    while True:
        async with store.conn() as c:
            rows = await c.fetch(
                f"SELECT id FROM workflows WHERE outcome IS NOT NULL AND id > $1{only} "
                f"ORDER BY id LIMIT {int(limit)}",
                after,
                *more,
            )
            if not rows:
                return deleted
            after = rows[-1]["id"]
            groups = await c.fetch(
                "SELECT workflow_id, queue, status, max(updated_at) AS at FROM tasks "
                f"WHERE workflow_id {store.in_list('$1')} GROUP BY workflow_id, queue, status",
                store.list_param([r["id"] for r in rows]),
            )
        last: dict[str, float] = {}
        keep: dict[str, float | None] = {}
        for g in groups:
            workflow_id, status = g["workflow_id"], Status(g["status"])
            last[workflow_id] = max(last.get(workflow_id, 0.0), g["at"])
            kept_as = _KEPT_AS.get(status)
            longest = keep.get(workflow_id, 0.0)
            if kept_as is None:  # a node still waiting or running: keep
                keep[workflow_id] = None
            elif longest is not None:
                seconds = age(g["queue"], kept_as)
                keep[workflow_id] = None if seconds is None else max(longest, seconds)
        gone = [
            w for w, seconds in keep.items() if seconds is not None and last[w] + seconds <= now
        ]
        if gone:
            async with store.tx() as c:
                found = await c.fetch(
                    f"DELETE FROM workflows WHERE id {store.in_list('$1')} "
                    "AND outcome IS NOT NULL RETURNING id",
                    store.list_param(gone),
                )
            deleted += len(found)
