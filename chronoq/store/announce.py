"""What a committed task change tells this process: wake-ups on the :class:`~chronoq.notify.Hub`
and events on the :class:`~chronoq.events.EventBus`, from one place.

The store's writes call :class:`Announcer` after their transaction committed and never
from inside a query, so a listener never hears of a change that was rolled back, and what
each transition announces reads in one file. (Other processes hear the same changes from
PostgreSQL's triggers, or from the Redis event bridge.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chronoq.events import EventBus, LogEvent, ProgressEvent, TaskEvent, WorkflowEvent
from chronoq.lifecycle import Status
from chronoq.notify import Hub
from chronoq.store.records import Completion, NewTask, Row, TaskRecord


class Announcer:
    """The announcements of each kind of committed change."""

    def __init__(self, hub: Hub, events: EventBus) -> None:
        self.hub = hub
        self.events = events

    def created(self, tasks: Sequence[NewTask]) -> None:
        """New tasks (submitted or fired): workers of their queues, or the scheduler for
        later ones, wake up; each task's ``queued``/``scheduled`` event."""
        if not tasks:
            return
        queues = {task.queue for task in tasks if task.status is Status.QUEUED}
        if queues:
            self.hub.ready(queues)
        if any(task.status is not Status.QUEUED for task in tasks):
            self.hub.scheduled()
        if self.events.active:
            self.events.publish(task.event() for task in tasks)

    def promoted(self, rows: Sequence[Row], now: float) -> None:
        """Due tasks moved to ``queued`` (rows: id, name, queue, attempts, schedule_id,
        priority, namespace)."""
        if not rows:
            return
        self.hub.ready({r["queue"] for r in rows})
        if self.events.active:
            self.events.publish(_row_event(r, Status.QUEUED.value, now) for r in rows)

    def advanced(self, rows: Sequence[Row], now: float) -> None:
        """Workflow nodes a parent's outcome or a retry changed (rows:
        :data:`chronoq.store.workflows.CHANGED`): the queued ones' workers wake; each
        node's event, and the workflow events of the doomed nodes and of the workflows
        that ended or revived (rows whose ``status`` is ``workflow:<status>``:
        :func:`chronoq.store.workflows.ended_row`)."""
        if not rows:
            return
        ends = [r for r in rows if str(r["status"]).startswith("workflow:")]
        if ends:
            rows = [r for r in rows if not str(r["status"]).startswith("workflow:")]
        queues = {r["queue"] for r in rows if r["status"] == Status.QUEUED.value}
        if queues:
            self.hub.ready(queues)
        if self.events.active:
            self.events.publish(_row_event(r, r["status"], now) for r in rows)
        if self.events.workflows_active:
            self.events.publish_workflows(
                [
                    *(_step_event(r, now) for r in rows if r["status"] in _STEP_ENDS),
                    *(_workflow_event(r, now) for r in ends),
                ]
            )

    def workflow(self, events: Sequence[WorkflowEvent]) -> None:
        """A workflow stored (``started``) or cancelled, with its cancelled steps."""
        if events and self.events.workflows_active:
            self.events.publish_workflows(events)

    def started(self, tasks: Sequence[TaskRecord], now: float) -> None:
        """Tasks a worker now holds (claimed or handed off): their ``running`` events."""
        if tasks and self.events.active:
            self.events.publish(t.event(now, wait=now - t.run_at) for t in tasks)

    def released(self, queues: Iterable[str]) -> None:
        """Tasks given back to their queues: their workers look again."""
        self.hub.ready(set(queues))

    def finished(self, applied: Sequence[Completion]) -> None:
        """Attempts whose outcome was recorded (reports for superseded attempts changed
        nothing and are left out): the scheduler hears of retries to time; each event."""
        if any(x.status is Status.FAILED for x in applied):
            self.hub.scheduled()
        freed = {x.task.queue for x in applied if x.task is not None and x.task.concurrency_key}
        if freed:  # a concurrency key's slot came free: its queue's workers look again
            self.hub.ready(freed)
        if self.events.active:
            self.events.publish(e for e in (x.event() for x in applied) if e is not None)
        if self.events.workflows_active:
            self.events.publish_workflows(
                WorkflowEvent(
                    x.task.workflow_id,
                    "step_finished",
                    x.finished_at,
                    x.task.namespace,
                    node=x.task.node,
                    task_id=x.task_id,
                    task_name=x.task.name,
                    step_status=x.status.value,
                    error=x.error,
                )
                for x in applied
                if x.task is not None
                and x.task.workflow_id is not None
                and x.status in (Status.SUCCEEDED, Status.DEAD)
            )

    def changed(
        self,
        records: Sequence[TaskRecord],
        now: float,
        *,
        requeued: bool = False,
        stopped: bool = False,
    ) -> None:
        """Tasks a user action changed (cancel, retry; one or in bulk): ``requeued``
        wakes the workers of their queues, ``stopped`` tells the workers running them to
        stop; each task's event."""
        if requeued and records:
            self.hub.ready({t.queue for t in records})
        if stopped:
            for task in records:
                self.hub.cancelled(task.id)
        if self.events.active and records:
            self.events.publish([t.event(now) for t in records])

    def progressed(self, events: Sequence[ProgressEvent]) -> None:
        """Running attempts' latest progress, stored (at most twice a second each): their
        events, when anyone may hear them."""
        if events and self.events.progress_active:
            self.events.publish_progress(events)

    def logged(self, events: Sequence[LogEvent]) -> None:
        """Running attempts' new log lines, stored (a chunk per event): their events, when
        anyone may hear them."""
        if events and self.events.logs_active:
            self.events.publish_logs(events)

    def scheduled(self) -> None:
        """Something may come due sooner (a schedule saved): the scheduler looks again."""
        self.hub.scheduled()

    def resumed(self, queue: str) -> None:
        """A paused queue resumed: its workers look again."""
        self.hub.ready((queue,))


#: node statuses a workflow row change ends a step in (doomed; cancelled in a cancel)
_STEP_ENDS = (Status.UPSTREAM_FAILED.value, Status.CANCELLED.value)


def _step_event(r: Row, now: float) -> WorkflowEvent:
    """``step_finished`` of a node row (:data:`chronoq.store.workflows.CHANGED`)."""
    return WorkflowEvent(
        r["workflow_id"],
        "step_finished",
        now,
        r["namespace"],
        node=r["node"],
        task_id=r["id"],
        task_name=r["name"],
        step_status=r["status"],
    )


def _workflow_event(r: Row, now: float) -> WorkflowEvent:
    """The event of a workflow row that ended or revived (``status`` ``workflow:<x>``)."""
    return WorkflowEvent(
        r["id"],
        str(r["status"]).removeprefix("workflow:"),
        now,
        r["namespace"],
        name=r["name"],
        node=r.get("node"),
        task_id=r.get("task_id"),
        task_name=r.get("task_name"),
        step_status=r.get("step_status"),
        error=r.get("error"),
    )


def _row_event(r: Row, status: str, now: float) -> TaskEvent:
    """The event of a task row (id, name, queue, attempts, schedule_id, priority,
    namespace) now in ``status``."""
    return TaskEvent(
        r["id"],
        r["name"],
        r["queue"],
        status,
        r["attempts"],
        now,
        r["schedule_id"],
        priority=r["priority"],
        namespace=r["namespace"],
    )
