"""The event bus: every task state change, for the WebSocket, the UI and metrics.

The store publishes a :class:`TaskEvent` after each committed change. Subscribers in this
process read them from a bounded queue; with a Redis URL the bus also forwards events to
Redis pub/sub and receives those of other processes (API, scheduler and workers run apart
in distributed mode). Publishing never blocks the hot path: events are built only when
someone listens, and sent to Redis in batches by a background task.

Workers also report what happens to them rather than to a task (a process-pool child
replaced, with its crash-loop backoff) as a :class:`WorkerEvent`. Those go to their own
subscribers (:meth:`EventBus.subscribe_workers`), so the many consumers of task events
never see a shape they do not expect, and travel in the same Redis messages under their
own key (``"workers"``), which receivers that predate them ignore. Workflows report
their own milestones the same way, as :class:`WorkflowEvent` (key ``"workflows"``).

A running handler's progress (``ctx.progress(0.4, "step 2 of 5")``) is a
:class:`ProgressEvent`, on a list of subscribers of its own and under the key
``"progress"``: the worker's log buffer publishes the latest value of each attempt at most
twice a second.

What a running handler logs and prints travels as :class:`LogEvent` (key ``"logs"``):
each is one chunk the worker's log buffer just stored (:mod:`chronoq.worker.journals`),
at most :data:`LOG_EVENT_BYTES` of text, numbered per attempt (``seq``) as the logs
endpoint's cursor counts them, so a reader sees a gap and fills it from
``GET /v1/tasks/{id}/logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson

from chronoq.backoff import Outage

log = logging.getLogger("chronoq.events")

CHANNEL = "chronoq:events"


@dataclass(slots=True)
class TaskEvent:
    """A task changed status. ``at`` is epoch seconds; durations are in seconds."""

    task_id: str
    name: str
    queue: str
    status: str
    attempt: int
    at: float
    schedule_id: str | None = None
    error: str | None = None
    duration: float | None = None
    wait: float | None = None
    priority: int = 0
    namespace: str = "default"
    type: str = "task"

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready form: ``at`` as an ISO 8601 UTC string, like the REST API."""
        return _to_wire(self)

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> TaskEvent:
        return cls(**_from_wire(wire))


@dataclass(slots=True)
class WorkerEvent:
    """Something happened to worker ``worker_id`` itself; ``status`` says what.

    ``child_restarted``: the process-pool child in ``slot`` (pid ``pid``) died or was
    killed (``exit_code``, or the name of the ``signal``; ``error`` says it in words) while
    running ``task_id`` (None when idle) and a new child replaces it after ``backoff``
    seconds (0 unless children keep crashing: ``crashes_in_a_row``). ``crash`` is false
    when the worker killed it for a timeout or a cancellation. ``restarts`` counts the
    worker's replaced children so far, as ``/v1/workers`` shows.
    """

    worker_id: str
    status: str
    at: float
    slot: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    crash: bool = True
    task_id: str | None = None
    error: str | None = None
    restarts: int = 0
    backoff: float = 0.0
    crashes_in_a_row: int = 0
    type: str = "worker"

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready form: ``at`` as an ISO 8601 UTC string, like task events."""
        return _to_wire(self)

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> WorkerEvent:
        return cls(**_from_wire(wire))


@dataclass(slots=True)
class ProgressEvent:
    """A running attempt reported how far it got: ``progress`` from 0 to 1, ``message``."""

    task_id: str
    name: str
    queue: str
    attempt: int
    at: float
    progress: float
    message: str | None = None
    worker_id: str | None = None
    namespace: str = "default"
    type: str = "progress"

    def to_wire(self) -> dict[str, Any]:
        return _to_wire(self)

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ProgressEvent:
        return cls(**_from_wire(wire))


#: the most line text one :class:`LogEvent` carries (bytes, UTF-8; a single longer line,
#: at most :data:`chronoq.logcapture.LINE_LIMIT` characters, travels alone)
LOG_EVENT_BYTES = 16 * 1024

#: a captured line: (epoch seconds, stream, text)
Line = tuple[float, str, str]


@dataclass(slots=True)
class LogEvent:
    """Chunk ``seq`` (from 1, per attempt) of the lines attempt ``attempt`` logged and
    printed, just stored: ``after=<attempt>.<seq>`` on ``GET /v1/tasks/{id}/logs`` reads
    what came after it. ``lines`` are (at, stream, text), ``at`` the last line's time."""

    task_id: str
    name: str
    queue: str
    attempt: int
    seq: int
    at: float
    lines: list[Line]
    worker_id: str | None = None
    namespace: str = "default"
    type: str = "log"

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready form: ``lines`` as ``{"at", "stream", "text"}`` like the logs endpoint."""
        wire = _to_wire(self)
        wire["lines"] = [{"at": _iso(at), "stream": s, "text": t} for at, s, t in self.lines]
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> LogEvent:
        fields = _from_wire(wire)
        fields["lines"] = [(_epoch(x["at"]), x["stream"], x["text"]) for x in wire["lines"]]
        return cls(**fields)


@dataclass(slots=True)
class WorkflowEvent:
    """Workflow ``workflow_id`` reached a milestone; ``status`` says which.

    ``started`` (stored, its first steps queued), ``step_finished`` (node ``node``, task
    ``task_id``, ended ``step_status``: succeeded, dead, cancelled or upstream_failed),
    then one end: ``succeeded`` (every node without children succeeded), ``failed`` (one
    of them died or cannot run, or the workflow's deadline passed: ``error`` says which),
    ``cancelled``; ``resumed`` when a retry revives a failed or cancelled one. ``name`` is
    the workflow's name (None on step events, which carry the step's task ``task_name``).
    """

    workflow_id: str
    status: str
    at: float
    namespace: str = "default"
    name: str | None = None
    node: str | None = None
    task_id: str | None = None
    task_name: str | None = None
    step_status: str | None = None
    error: str | None = None
    type: str = "workflow"

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready form: ``at`` as an ISO 8601 UTC string, like task events."""
        return _to_wire(self)

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> WorkflowEvent:
        return cls(**_from_wire(wire))


def _to_wire(
    event: TaskEvent | WorkerEvent | ProgressEvent | WorkflowEvent | LogEvent,
) -> dict[str, Any]:
    wire = asdict(event)
    wire["at"] = _iso(event.at)
    return wire


def _from_wire(wire: dict[str, Any]) -> dict[str, Any]:
    return {**wire, "at": _epoch(wire["at"])}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


E = TypeVar("E", TaskEvent, WorkerEvent, ProgressEvent, WorkflowEvent, LogEvent)


class Feed(Generic[E]):
    """An async iterator over batches of events; close it (or use ``async with``)."""

    def __init__(self, home: set[Feed[E]], maxsize: int, local_only: bool = False) -> None:
        self.home: set[Feed[E]] = home
        self.local_only = local_only
        self.queue: asyncio.Queue[list[E]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, batch: list[E]) -> None:
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.dropped += len(batch)

    def __aiter__(self) -> AsyncIterator[list[E]]:
        return self

    async def __anext__(self) -> list[E]:
        return await self.queue.get()

    def close(self) -> None:
        self.home.discard(self)

    def __enter__(self) -> Feed[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: a subscription to task events (the bus's main use)
Subscription = Feed[TaskEvent]
#: a subscription to worker events
WorkerSubscription = Feed[WorkerEvent]
#: a subscription to progress events
ProgressSubscription = Feed[ProgressEvent]
#: a subscription to workflow events
WorkflowSubscription = Feed[WorkflowEvent]
#: a subscription to log events
LogSubscription = Feed[LogEvent]


class EventBus:
    """Fan-out of task events to local subscribers, optionally bridged through Redis."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._subscribers: set[Subscription] = set()
        self._worker_subscribers: set[WorkerSubscription] = set()
        self._workflow_subscribers: set[WorkflowSubscription] = set()
        self._outbox: list[TaskEvent] = []
        self._worker_outbox: list[WorkerEvent] = []
        self._progress_subscribers: set[ProgressSubscription] = set()
        self._progress_outbox: list[ProgressEvent] = []
        self._workflow_outbox: list[WorkflowEvent] = []
        self._log_subscribers: set[LogSubscription] = set()
        self._log_outbox: list[LogEvent] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None
        #: set while the Redis subscription is confirmed: from then on this bus hears
        #: what other processes publish (Redis keeps nothing for a subscriber not yet there)
        self.listening = asyncio.Event()
        #: Redis down: the bridge backs off (1 s doubling to 5 s), one traceback, then a line
        self._send_outage = Outage(
            "publishing events to Redis", log, cap=5.0, level=logging.WARNING
        )
        self._receive_outage = Outage(
            "the event subscription to Redis", log, cap=5.0, level=logging.WARNING
        )

    @property
    def active(self) -> bool:
        """Whether anyone listens (callers skip building events otherwise)."""
        return bool(self._subscribers) or self._redis is not None

    def subscribe(self, maxsize: int = 1000, local_only: bool = False) -> Subscription:
        """Events as they happen; ``local_only`` skips those received from other processes
        (for consumers that act on their own process's changes: metrics, the broker)."""
        subscription = Subscription(self._subscribers, maxsize, local_only)
        self._subscribers.add(subscription)
        return subscription

    def subscribe_workers(self, maxsize: int = 1000) -> WorkerSubscription:
        """Worker events (of this process and, through Redis, of the others) as they happen."""
        subscription = WorkerSubscription(self._worker_subscribers, maxsize)
        self._worker_subscribers.add(subscription)
        return subscription

    def subscribe_progress(self, maxsize: int = 1000) -> ProgressSubscription:
        """Progress events (of this process and, through Redis, of the others)."""
        subscription = ProgressSubscription(self._progress_subscribers, maxsize)
        self._progress_subscribers.add(subscription)
        return subscription

    @property
    def progress_active(self) -> bool:
        """Whether anyone may hear progress events (publishers skip them otherwise)."""
        return bool(self._progress_subscribers) or self._redis is not None

    def publish_progress(self, events: Iterable[ProgressEvent]) -> None:
        self._fan_out(self._progress_subscribers, self._progress_outbox, events)

    def subscribe_logs(self, maxsize: int = 1000) -> LogSubscription:
        """Log events (of this process and, through Redis, of the others)."""
        subscription = LogSubscription(self._log_subscribers, maxsize)
        self._log_subscribers.add(subscription)
        return subscription

    @property
    def logs_active(self) -> bool:
        """Whether anyone may hear log events (the log buffer builds none otherwise)."""
        return bool(self._log_subscribers) or self._redis is not None

    def publish_logs(self, events: Iterable[LogEvent]) -> None:
        self._fan_out(self._log_subscribers, self._log_outbox, events)

    def subscribe_workflows(self, maxsize: int = 1000) -> WorkflowSubscription:
        """Workflow events (of this process and, through Redis, of the others)."""
        subscription = WorkflowSubscription(self._workflow_subscribers, maxsize)
        self._workflow_subscribers.add(subscription)
        return subscription

    @property
    def workflows_active(self) -> bool:
        """Whether anyone listens to workflow events (callers skip building them)."""
        return bool(self._workflow_subscribers) or self._redis is not None

    def publish_workflows(self, events: Iterable[WorkflowEvent]) -> None:
        self._fan_out(self._workflow_subscribers, self._workflow_outbox, events)

    def publish(self, events: Iterable[TaskEvent]) -> None:
        self._fan_out(self._subscribers, self._outbox, events)

    def publish_workers(self, events: Iterable[WorkerEvent]) -> None:
        """Worker events (rare: built whether or not anyone listens)."""
        self._fan_out(self._worker_subscribers, self._worker_outbox, events)

    def _fan_out(self, subscribers: set[Feed[E]], outbox: list[E], events: Iterable[E]) -> None:
        """Every feed's publishing: to this process's subscribers now, and into the outbox
        the Redis bridge sends to the other processes."""
        batch = list(events)
        if not batch:
            return
        _deliver(subscribers, batch)
        if self._redis is not None:
            outbox.extend(batch)
            self._outbox_ready.set()

    def _deliver(self, batch: list[TaskEvent], remote: bool = False) -> None:
        _deliver(self._subscribers, batch, remote)

    # -- Redis bridge ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the Redis bridge when a Redis URL is configured."""
        if not self.redis_url or self._redis is not None:
            return
        import redis.asyncio as redis

        self._redis = redis.from_url(self.redis_url)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="chronoq-events-send"),
            asyncio.create_task(self._receive_loop(), name="chronoq-events-recv"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._flush()
                await self._redis.aclose()
            self._redis = None

    async def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        workers, self._worker_outbox = self._worker_outbox, []
        progress, self._progress_outbox = self._progress_outbox, []
        flows, self._workflow_outbox = self._workflow_outbox, []
        logs, self._log_outbox = self._log_outbox, []
        if batch or workers or progress or flows or logs:
            message: dict[str, Any] = {
                "origin": self.origin,
                "events": [e.to_wire() for e in batch],
            }
            if workers:
                message["workers"] = [e.to_wire() for e in workers]
            if progress:
                message["progress"] = [e.to_wire() for e in progress]
            if flows:
                message["workflows"] = [e.to_wire() for e in flows]
            if logs:
                message["logs"] = [e.to_wire() for e in logs]
            await self._redis.publish(CHANNEL, orjson.dumps(message))

    async def _send_loop(self) -> None:
        task = asyncio.current_task()
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            try:
                await self._flush()
            except Exception as exc:  # Redis down: events are best-effort, state is not
                await asyncio.sleep(self._send_outage.failed(exc))
                continue
            finally:
                # redis-py can swallow a cancel that lands inside PUBLISH; without this
                # check close() would wait forever on a loop that went back to waiting
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
            self._send_outage.over()

    async def _receive_loop(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                self._receive_outage.over()
                async for message in pubsub.listen():
                    if message.get("type") == "subscribe":
                        self.listening.set()
                    if message.get("type") != "message":
                        continue
                    body = orjson.loads(message["data"])
                    if body.get("origin") == self.origin:
                        continue
                    if body["events"]:
                        tasks = [TaskEvent.from_wire(e) for e in body["events"]]
                        self._deliver(tasks, remote=True)
                    if body.get("workers"):
                        workers = [WorkerEvent.from_wire(e) for e in body["workers"]]
                        _deliver(self._worker_subscribers, workers, remote=True)
                    if body.get("progress"):
                        steps = [ProgressEvent.from_wire(e) for e in body["progress"]]
                        _deliver(self._progress_subscribers, steps, remote=True)
                    if body.get("workflows"):
                        flows = [WorkflowEvent.from_wire(e) for e in body["workflows"]]
                        _deliver(self._workflow_subscribers, flows, remote=True)
                    if body.get("logs"):
                        chunks = [LogEvent.from_wire(e) for e in body["logs"]]
                        _deliver(self._log_subscribers, chunks, remote=True)
            except asyncio.CancelledError:
                self.listening.clear()
                raise
            except Exception as exc:
                self.listening.clear()
                await asyncio.sleep(self._receive_outage.failed(exc))


def _deliver(subscribers: set[Feed[E]], batch: list[E], remote: bool = False) -> None:
    for subscription in list(subscribers):
        if not (remote and subscription.local_only):
            subscription.offer(batch)
