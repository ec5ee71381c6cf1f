"""Workflows from Python: ``chain``, ``group``, ``chord`` and ``dag`` of task signatures.

Each builds a :class:`chronoq.dag.WorkflowCreate` (nodes and edges, the same data
``POST /v1/workflows`` takes), which the store keeps and advances by itself
(:mod:`chronoq.store.workflows`). ``.delay()`` / ``.adelay()`` store it in one
transaction and return a :class:`WorkflowHandle` whose result is the last step's (a
group's: the list of its results, in order).

>>> flow = chronoq.chain(fetch.s(url=u), parse.s(), chronoq.group(a.s(), b.s()), merge.s())
>>> flow.delay().result(timeout=30)   # parse gets result=, merge gets results=[a, b]
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from chronoq.dag import Workflow, WorkflowCreate, WorkflowEdge, WorkflowNode
from chronoq.handles import RECHECK_SECONDS, ResultTimeout, changed
from chronoq.models import Task, TaskTemplate
from chronoq.states import Status
from chronoq.store import workflows

if TYPE_CHECKING:
    from chronoq.app import App, TaskFunction

R = TypeVar("R")

#: a handler's checked task template, by its name and defaults (see Signature.template)
_TEMPLATES: dict[tuple[str, str], TaskTemplate] = {}
#: statuses of an output that end the wait with an error
_FAILED = frozenset({Status.DEAD, Status.CANCELLED, Status.UPSTREAM_FAILED})


class WorkflowFailed(Exception):
    """An output of the workflow will never succeed (it died, was cancelled, or an
    ancestor did); ``task`` is that output as it ended."""

    def __init__(self, workflow_id: str, task: Task) -> None:
        super().__init__(
            f"workflow {workflow_id}: {task.name} ({task.id}) is {task.status}: {task.error}"
        )
        self.workflow_id = workflow_id
        self.task = task


@dataclass
class _Part:
    """What a piece of a canvas contributes to its graph: where its work enters, its
    outputs, and whether those are a group's (passed on as one list)."""

    heads: list[str]
    tails: list[str]
    parallel: bool


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[WorkflowNode] = []
        self.edges: list[WorkflowEdge] = []
        self.receives: dict[str, tuple[str | None, str | None]] = {}  # node -> (one, many)

    def node(self, signature: Signature, node_id: str | None = None) -> str:
        node_id = node_id or f"{len(self.nodes)}:{signature.task.name[:80]}"
        self.nodes.append(WorkflowNode(id=node_id, task=signature.template()))
        self.receives[node_id] = (signature.arg, signature.arg)
        return node_id

    def link(self, before: _Part, after: _Part) -> None:
        """Every head of ``after`` waits for ``before``'s outputs and receives them: one
        as ``result``, a group's as the list ``results``."""
        many = before.parallel or len(before.tails) != 1
        for head in after.heads:
            one, listed = self.receives[head]
            for position, tail in enumerate(before.tails):
                self.edges.append(
                    WorkflowEdge(
                        parent=tail,
                        child=head,
                        arg=(listed or "results") if many else (one or "result"),
                        position=position if many else None,
                    )
                )


class Canvas:
    """A workflow not yet submitted."""

    def _build(self, b: _Builder) -> _Part:
        raise NotImplementedError

    def _app(self) -> App:
        raise NotImplementedError

    def spec(self, name: str = "workflow") -> WorkflowCreate:
        """The graph as ``POST /v1/workflows`` takes it."""
        b = _Builder()
        part = self._build(b)
        return WorkflowCreate(
            name=name, nodes=b.nodes, edges=b.edges, outputs=part.tails, collect=part.parallel
        )

    async def adelay(self, name: str = "workflow") -> WorkflowHandle[Any]:
        """Store the workflow (one transaction) and start its first steps."""
        app = self._app()
        started = await workflows.create(app.store, self.spec(name), time.time())
        return WorkflowHandle(app, started.workflow)

    def delay(self, name: str = "workflow") -> WorkflowHandle[Any]:
        """:meth:`adelay` for sync code."""
        return self._app().run_sync(self.adelay(name))


class Signature(Canvas):
    """A task with its arguments, to run as one step (``task.s(**kwargs)``)."""

    def __init__(self, task: TaskFunction[Any, Any], kwargs: dict[str, Any]) -> None:
        self.task, self.kwargs = task, kwargs
        #: the keyword its parents' results arrive as (default ``result`` / ``results``)
        self.arg: str | None = None

    def receives(self, arg: str) -> Signature:
        """This step with its parents' result(s) passed as ``arg`` instead."""
        copy = Signature(self.task, self.kwargs)
        copy.arg = arg
        return copy

    def template(self) -> TaskTemplate:
        """The node's task: the handler's defaults (checked once per handler and
        settings) with these arguments as the payload."""
        key = (self.task.name, repr(sorted(self.task.defaults.items())))
        base = _TEMPLATES.get(key)
        if base is None:
            spec = self.task.spec({})
            fields = set(TaskTemplate.model_fields)
            base = _TEMPLATES[key] = TaskTemplate.model_validate(spec.model_dump(include=fields))
        return base.model_copy(update={"payload": dict(self.kwargs)})

    def _build(self, b: _Builder) -> _Part:
        node = b.node(self)
        return _Part([node], [node], False)

    def _app(self) -> App:
        return self.task.app


class _Composite(Canvas):
    def __init__(self, parts: Sequence[Canvas]) -> None:
        if not parts:
            raise ValueError(f"{type(self).__name__.lower()} needs at least one step")
        self.parts = list(parts)

    def _app(self) -> App:
        return self.parts[0]._app()


class Chain(_Composite):
    """Steps one after another; each gets the previous one's result."""

    def _build(self, b: _Builder) -> _Part:
        built = [part._build(b) for part in self.parts]
        for before, after in itertools.pairwise(built):
            b.link(before, after)
        return _Part(built[0].heads, built[-1].tails, built[-1].parallel)


class Group(_Composite):
    """Steps side by side; the result is the list of theirs, in order."""

    def _build(self, b: _Builder) -> _Part:
        built = [part._build(b) for part in self.parts]
        return _Part([h for p in built for h in p.heads], [t for p in built for t in p.tails], True)


@dataclass(frozen=True)
class Step:
    """A named node of a :func:`dag`: it runs after ``depends_on`` and receives each
    parent's result as the keyword named after that parent."""

    name: str
    signature: Signature
    depends_on: Sequence[str] = ()


class Dag(Canvas):
    """Named steps with explicit dependencies; the result is that of the steps nothing
    depends on (a list when there are several)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        if not steps:
            raise ValueError("dag needs at least one step")
        self.steps = list(steps)

    def _build(self, b: _Builder) -> _Part:
        for s in self.steps:
            b.node(s.signature, s.name)
        for s in self.steps:
            for parent in s.depends_on:
                b.edges.append(WorkflowEdge(parent=parent, child=s.name))
        parents = {p for s in self.steps for p in s.depends_on}
        sinks = [s.name for s in self.steps if s.name not in parents]
        heads = [s.name for s in self.steps if not s.depends_on]
        return _Part(heads, sinks, len(sinks) != 1)

    def _app(self) -> App:
        return self.steps[0].signature._app()


def chain(*steps: Canvas) -> Chain:
    """Run ``steps`` in order, each receiving the previous result as ``result`` (a
    group's results as the list ``results``)."""
    return Chain(steps)


def group(*steps: Canvas) -> Group:
    """Run ``steps`` in parallel; the result is the list of their results, in order."""
    return Group(steps)


def chord(header: Group | Sequence[Canvas], callback: Canvas) -> Chain:
    """Run ``header`` in parallel, then ``callback`` once, with their results in order as
    ``results``."""
    return Chain([header if isinstance(header, Group) else Group(header), callback])


def step(name: str, signature: Signature, depends_on: Sequence[str] = ()) -> Step:
    """A node of a :func:`dag`."""
    return Step(name, signature, tuple(depends_on))


def dag(*steps: Step) -> Dag:
    """A general graph: each step runs when every step it ``depends_on`` succeeded and
    gets their results by name."""
    return Dag(steps)


class WorkflowHandle(Generic[R]):
    """A stored workflow; ``result()`` waits for its outputs the way a
    :class:`~chronoq.handles.TaskHandle` waits for a task (events, not polling)."""

    def __init__(self, app: App, workflow: Workflow) -> None:
        self.app = app
        #: the workflow as stored
        self.workflow = workflow

    @property
    def id(self) -> str:
        return self.workflow.id

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow.name} {self.id}>"

    async def aget(self) -> Workflow:
        """The workflow now, with every node's state."""
        return await workflows.get(self.app.store, self.id)

    async def acancel(self) -> Workflow:
        """Cancel every node that has not finished (running ones are stopped)."""
        return await workflows.cancel(self.app.store, self.id, time.time())

    async def aretry(self) -> Workflow:
        """Retry every dead step now; the steps that failed because of them wait again."""
        return await workflows.retry(self.app.store, self.id, time.time())

    async def aresult(
        self, timeout: float | None = None, *, recheck_seconds: float = RECHECK_SECONDS
    ) -> R:
        """The outputs' result once all succeeded; :class:`WorkflowFailed` as soon as one
        cannot, :class:`~chronoq.handles.ResultTimeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outputs = self.workflow.outputs
        done: dict[str, Any] = {}
        with self.app.store.events.subscribe() as events:  # before the reads
            while True:
                last = None
                for task_id in outputs:
                    if task_id in done:
                        continue
                    last = await self.app.aget(task_id, history=False)
                    if last.status is Status.SUCCEEDED:
                        done[task_id] = last.result
                    elif last.status in _FAILED:
                        raise WorkflowFailed(self.id, last)
                if len(done) == len(outputs):
                    results = [done[t] for t in outputs]
                    return cast(R, results if self.workflow.collect else results[0])
                left = recheck_seconds if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    assert last is not None
                    raise ResultTimeout(last, cast(float, timeout))
                await changed(events, set(outputs) - set(done), min(left, recheck_seconds))

    def get(self) -> Workflow:
        return self.app.run_sync(self.aget())

    def cancel(self) -> Workflow:
        return self.app.run_sync(self.acancel())

    def retry(self) -> Workflow:
        return self.app.run_sync(self.aretry())

    def result(
        self, timeout: float | None = None, *, recheck_seconds: float = RECHECK_SECONDS
    ) -> R:
        """:meth:`aresult` for sync code."""
        return self.app.run_sync(self.aresult(timeout, recheck_seconds=recheck_seconds))


__all__ = [
    "Canvas",
    "Chain",
    "Dag",
    "Group",
    "Signature",
    "Step",
    "WorkflowFailed",
    "WorkflowHandle",
    "chain",
    "chord",
    "dag",
    "group",
    "step",
]
