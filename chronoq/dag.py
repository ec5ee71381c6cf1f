"""A workflow as data: nodes (tasks), edges (parent -> child) and the checks a graph must
pass before it is stored — unique ids, known endpoints, no cycle, a bounded size and one
meaning per argument a child receives. The REST API, the SDK's canvas and the store all
speak these models, so a graph refused by one is refused by all with the same message.
"""

from __future__ import annotations

from collections import defaultdict, deque
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chronoq.lifecycle import Status
from chronoq.models import Id, TaskTemplate

#: the most nodes and edges one workflow may have (a chord of 10,000 and its callback fits)
MAX_NODES = 20_000
MAX_EDGES = 100_000

NodeId = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$", description="node id"),
]
ArgName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="payload keyword the parent's result is passed as",
    ),
]


class WorkflowNode(BaseModel):
    """One step: the task to run once every parent has succeeded."""

    model_config = ConfigDict(extra="forbid")

    id: NodeId
    task: TaskTemplate


class WorkflowEdge(BaseModel):
    """``child`` runs after ``parent`` succeeded and receives its result as the keyword
    ``arg`` (default: the parent's id) or, with ``position``, at that index of the list
    ``arg`` (how a chord's callback receives ``results``). With ``always`` the child runs
    after ``parent`` ended however it ended (dead, cancelled or upstream_failed too: it
    then receives null for it), like Airflow's ``all_done`` trigger rule."""

    model_config = ConfigDict(extra="forbid")

    parent: NodeId
    child: NodeId
    arg: ArgName | None = None
    position: int | None = Field(None, ge=0, lt=MAX_NODES)
    always: bool = Field(False, description="run the child even if this parent failed")

    @property
    def keyword(self) -> str:
        return self.arg if self.arg is not None else self.parent


class WorkflowCreate(BaseModel):
    """A workflow to start: its nodes, the edges between them, and which nodes' results
    are its result (default: the nodes without children, in node order)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("workflow", min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    nodes: list[WorkflowNode] = Field(..., min_length=1, max_length=MAX_NODES)
    edges: list[WorkflowEdge] = Field(default_factory=list, max_length=MAX_EDGES)
    outputs: list[NodeId] | None = Field(
        None, max_length=MAX_NODES, description="nodes whose results are the workflow's"
    )
    collect: bool = Field(
        False, description="the result is the list of the outputs' results (a group's)"
    )
    timeout_seconds: float | None = Field(
        None,
        gt=0,
        le=366 * 86400,
        description="deadline from the start: then every unfinished node is cancelled and "
        "the workflow fails",
    )

    @model_validator(mode="after")
    def _valid(self) -> WorkflowCreate:
        check(self)
        return self

    def sinks(self) -> list[str]:
        """The outputs given, else the nodes no edge leaves, in node order."""
        if self.outputs is not None:
            return list(self.outputs)
        parents = {e.parent for e in self.edges}
        return [n.id for n in self.nodes if n.id not in parents]


def check(spec: WorkflowCreate) -> None:
    """``ValueError`` naming the first problem of the graph, if it has one."""
    ids = [n.id for n in spec.nodes]
    known = set(ids)
    if len(known) != len(ids):
        seen: set[str] = set()
        twice = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"node id {twice!r} is used twice")
    pairs: set[tuple[str, str]] = set()
    args: dict[tuple[str, str], set[int | None]] = defaultdict(set)
    payloads = {n.id: n.task.payload for n in spec.nodes}
    for index, edge in enumerate(spec.edges):
        for end in (edge.parent, edge.child):
            if end not in known:
                raise ValueError(f"edges.{index} names an unknown node {end!r}")
        if edge.parent == edge.child:
            raise ValueError(f"edges.{index}: node {edge.parent!r} cannot depend on itself")
        if (edge.parent, edge.child) in pairs:
            raise ValueError(f"edges.{index}: {edge.parent!r} -> {edge.child!r} is given twice")
        pairs.add((edge.parent, edge.child))
        used = args[(edge.child, edge.keyword)]
        if edge.position in used or (used and (None in used or edge.position is None)):
            raise ValueError(
                f"edges.{index}: node {edge.child!r} already receives {edge.keyword!r} "
                "from another parent (give the edges distinct `arg`s or `position`s)"
            )
        used.add(edge.position)
        if edge.keyword in payloads[edge.child]:
            raise ValueError(
                f"edges.{index}: node {edge.child!r}'s payload already has {edge.keyword!r}, "
                "which its parent's result would replace"
            )
    for output in spec.outputs or ():
        if output not in known:
            raise ValueError(f"outputs names an unknown node {output!r}")
    _acyclic(ids, [(e.parent, e.child) for e in spec.edges])


def _acyclic(ids: list[str], edges: list[tuple[str, str]]) -> None:
    """Kahn's algorithm; what it cannot order lies on or behind a cycle, which is named."""
    children: dict[str, list[str]] = defaultdict(list)
    waiting = dict.fromkeys(ids, 0)
    for parent, child in edges:
        children[parent].append(child)
        waiting[child] += 1
    ready = deque(i for i in ids if waiting[i] == 0)
    ordered = 0
    while ready:
        node = ready.popleft()
        ordered += 1
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if ordered == len(ids):
        return
    left = {i for i in ids if waiting[i] > 0}
    path, node = [], next(i for i in ids if i in left)
    while node not in path:  # every unordered node has an unordered child: walk to a repeat
        path.append(node)
        node = next(c for c in children[node] if c in left)
    cycle = [*path[path.index(node) :], node]
    raise ValueError(f"the edges form a cycle: {' -> '.join(cycle)}")


WorkflowStatus = Literal["running", "succeeded", "failed", "cancelled"]


def overall(counts: dict[Status, int]) -> WorkflowStatus:
    """A workflow's status from its nodes', for rows without an ``outcome``: cancelled or
    failed as soon as one node is (dead or upstream_failed), succeeded when all are, else
    running."""
    if counts.get(Status.CANCELLED):
        return "cancelled"
    if counts.get(Status.DEAD) or counts.get(Status.UPSTREAM_FAILED):
        return "failed"
    if sum(counts.values()) == counts.get(Status.SUCCEEDED, 0):
        return "succeeded"
    return "running"


class WorkflowNodeState(BaseModel):
    """One node as it is now."""

    id: str = Field(description="node id")
    task_id: Id
    name: str
    status: Status
    attempts: int
    parents: list[str] = Field(description="ids of the nodes it waits for")
    waiting: int = Field(description="parents that have not succeeded yet")
    result: Any = None
    error: str | None = None


class WorkflowEdgeState(BaseModel):
    """An edge between two nodes (by node id)."""

    parent: str
    child: str
    always: bool = False


class Workflow(BaseModel):
    """A workflow as the API returns it."""

    id: Id
    name: str
    namespace: str
    status: WorkflowStatus
    created_at: datetime
    size: int = Field(description="number of nodes")
    counts: dict[Status, int] = Field(description="nodes per status")
    outputs: list[str] = Field(description="task ids whose results are the workflow's")
    collect: bool
    finished_at: datetime | None = Field(
        None, description="when it succeeded, failed or was cancelled"
    )
    error: str | None = Field(None, description="why it failed or was cancelled")
    deadline: datetime | None = Field(None, description="its timeout_seconds from the start")
    schedule_id: str | None = Field(None, description="the schedule whose slot started it")
    edges: list[WorkflowEdgeState] | None = Field(None, description="every edge, on GET by id")
    nodes: list[WorkflowNodeState] | None = Field(None, description="every node, on GET by id")


class WorkflowPage(BaseModel):
    items: list[Workflow]
    next_cursor: Id | None = Field(None, description="pass as `cursor` for the next page")


def _link_schedule_models() -> None:
    """The schedule models name :class:`WorkflowCreate` (a schedule may start one); this
    module imports :mod:`chronoq.models`, so it hands the class over once defined."""
    from chronoq import models

    vars(models)["WorkflowCreate"] = WorkflowCreate  # for pydantic to resolve the name
    for model in (models.ScheduleFields, models.ScheduleCreate, models.ScheduleUpdate):
        model.model_rebuild()
    models.Schedule.model_rebuild()


_link_schedule_models()
