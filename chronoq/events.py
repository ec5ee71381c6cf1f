"""The event bus: every task state change, for the WebSocket, the UI and metrics.

The store publishes a :class:`TaskEvent` after each committed change. Subscribers in this
process read them from a bounded queue; with a Redis URL the bus also forwards events to
Redis pub/sub and receives those of other processes (API, scheduler and workers run apart
in distributed mode). Publishing never blocks the hot path: events are built only when
someone listens, and sent to Redis in batches by a background task.
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
from typing import Any

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
        wire = asdict(self)
        wire["at"] = datetime.fromtimestamp(self.at, UTC).isoformat().replace("+00:00", "Z")
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> TaskEvent:
        at = datetime.fromisoformat(wire["at"].replace("Z", "+00:00")).timestamp()
        return cls(**{**wire, "at": at})


class Subscription:
    """An async iterator over batches of events; close it (or use ``async with``)."""

    def __init__(self, bus: EventBus, maxsize: int, local_only: bool = False) -> None:
        self.bus = bus
        self.local_only = local_only
        self.queue: asyncio.Queue[list[TaskEvent]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, batch: list[TaskEvent]) -> None:
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.dropped += len(batch)

    def __aiter__(self) -> AsyncIterator[list[TaskEvent]]:
        return self

    async def __anext__(self) -> list[TaskEvent]:
        return await self.queue.get()

    def close(self) -> None:
        self.bus._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of task events to local subscribers, optionally bridged through Redis."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._subscribers: set[Subscription] = set()
        self._outbox: list[TaskEvent] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Any = None
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
        subscription = Subscription(self, maxsize, local_only)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, events: Iterable[TaskEvent]) -> None:
        batch = list(events)
        if not batch:
            return
        self._deliver(batch)
        if self._redis is not None:
            self._outbox.extend(batch)
            self._outbox_ready.set()

    def _deliver(self, batch: list[TaskEvent], remote: bool = False) -> None:
        for subscription in list(self._subscribers):
            if not (remote and subscription.local_only):
                subscription.offer(batch)

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
        if batch:
            message = {"origin": self.origin, "events": [e.to_wire() for e in batch]}
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
                    if message.get("type") != "message":
                        continue
                    body = orjson.loads(message["data"])
                    if body.get("origin") == self.origin:
                        continue
                    self._deliver([TaskEvent.from_wire(e) for e in body["events"]], remote=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await asyncio.sleep(self._receive_outage.failed(exc))
