"""Redis Streams broker: "task X is ready" messages between the store and the workers.

* One stream per queue and priority band: ``chronoq:q:<queue>:<band>`` with bands ``high``
  (priority > 0), ``normal`` (0) and ``low`` (< 0); workers read the bands in that order.
* Consumer group ``chronoq``: each message goes to one worker, which claims the task in
  the store (a conditional UPDATE, so a duplicate message never runs a task twice) and
  acknowledges (XACK + XDEL) only after the attempt's outcome is recorded.
* Messages a consumer took but never acknowledged (it crashed before claiming) are taken
  over with XAUTOCLAIM after ``visibility_seconds``.
* The store is the source of truth: :class:`Publisher` turns this process's "queued"
  events into messages, and the leading scheduler's reconciler re-publishes tasks that
  stay queued without being picked up (e.g. after Redis restarted empty): nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from chronoq.backoff import Outage
from chronoq.broker.base import Broker
from chronoq.events import EventBus, Subscription
from chronoq.store import TaskRecord
from chronoq.store.interfaces import ClaimStore

log = logging.getLogger("chronoq.broker")

GROUP = "chronoq"
BANDS = ("high", "normal", "low")
MAXLEN = 1_000_000


def stream(queue: str, priority: int) -> str:
    band = "high" if priority > 0 else ("low" if priority < 0 else "normal")
    return f"chronoq:q:{queue}:{band}"


def connect(url: str) -> redis.Redis:
    return redis.from_url(
        url, decode_responses=True, health_check_interval=10, socket_keepalive=True
    )


async def publish(client: redis.Redis, ready: Iterable[tuple[str, str, int]]) -> int:
    """XADD one message per (task id, queue, priority), pipelined."""
    items = list(ready)
    if not items:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for task_id, queue, priority in items:
            pipe.xadd(stream(queue, priority), {"id": task_id}, maxlen=MAXLEN, approximate=True)
        await pipe.execute()
    return len(items)


class Publisher:
    """Publishes this process's newly queued tasks (from its event bus) to Redis."""

    def __init__(self, url: str, events: EventBus) -> None:
        self.client = connect(url)
        self.events = events
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self._outage = Outage(
            "publishing ready tasks to Redis (the reconciler re-publishes them)",
            log,
            level=logging.WARNING,
        )

    async def start(self) -> None:
        self._subscription = self.events.subscribe(maxsize=100_000, local_only=True)
        self._task = asyncio.create_task(self._run(), name="chronoq-publisher")

    async def close(self) -> None:
        """Publish what is pending, then stop. (Not by cancelling mid-publish: redis-py's
        pipeline can swallow a cancellation, which would leave the task waiting forever.)"""
        if self._task is not None and self._subscription is not None:
            self._subscription.queue.put_nowait([])  # the stop sentinel: an empty batch
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("publisher did not stop within 5 s; the reconciler covers the rest")
        if self._subscription is not None:
            self._subscription.close()
        await self.client.aclose()

    async def _run(self) -> None:
        assert self._subscription is not None
        queue = self._subscription.queue
        stopping = False
        while not stopping:
            first = await queue.get()
            stopping = not first
            batch = list(first)  # a copy: the bus hands the same list to every subscriber
            while not queue.empty():  # coalesce whatever else is waiting into one pipeline
                more = queue.get_nowait()
                stopping = stopping or not more
                batch.extend(more)
            ready = [(e.task_id, e.queue, e.priority) for e in batch if e.status == "queued"]
            try:
                self.published += await publish(self.client, ready)
            except (RedisError, OSError) as exc:  # the reconciler re-publishes them
                self._outage.failed(exc)  # no wait: every batch is tried once, as it comes
                continue
            self._outage.over()

    async def reconcile(self, store: ClaimStore, older_than: float = 5.0) -> int:
        """Re-publish tasks queued for more than ``older_than`` s that nobody picked up."""
        now = time.time()
        stale = await store.stale_queued(now - older_than, now)
        if stale:
            await publish(self.client, stale)
            log.info("re-published %d queued tasks to Redis", len(stale))
        return len(stale)

    async def republish(self, store: ClaimStore, queue: str, most: int = 10_000) -> int:
        """Publish up to ``most`` queued tasks of a queue just resumed (their messages were
        dropped while it was paused); the reconciler publishes any beyond that, and all of
        them if Redis cannot be reached now (the resume itself stands)."""
        now, published = time.time(), 0
        while published < most:
            batch = await store.stale_queued(now, now, min(1000, most - published), queue)
            try:
                published += await publish(self.client, batch)
            except (RedisError, OSError) as exc:
                log.warning(
                    "could not re-publish resumed queue %s to Redis (%s); the reconciler will",
                    queue,
                    exc,
                )
                break
            if len(batch) < 1000:
                break
        return published


#: the longest a worker of queues with keyed tasks blocks on its streams
KEYED_WAIT = 0.05


class RedisBroker(Broker):
    """A worker's consumer in the ``chronoq`` group of its queues' streams."""

    def __init__(
        self,
        url: str,
        store: ClaimStore,
        worker_id: str,
        queues: Sequence[str],
        lease_seconds: float,
        visibility_seconds: float = 30.0,
    ) -> None:
        self.client = connect(url)
        self.store = store
        self.worker_id = worker_id
        self.streams = [f"chronoq:q:{q}:{band}" for band in BANDS for q in queues]
        self.queues = list(queues)
        self.lease_seconds = lease_seconds
        self.visibility_seconds = visibility_seconds
        self._inflight: dict[str, tuple[str, str]] = {}
        self._next_autoclaim = 0.0
        self._interrupted = False
        #: Redis down: reads back off (1 s doubling to 5 s), one traceback, a line per retry
        self._outage = Outage("reading from Redis", log, cap=5.0, level=logging.WARNING)

    async def start(self) -> None:
        try:
            await self._ensure_groups()
        except (RedisError, OSError) as exc:  # Redis down: fetch retries and recreates them
            log.warning("Redis unavailable at start (%s); will retry", exc)

    async def close(self) -> None:
        await self.client.aclose()

    def interrupt(self) -> None:
        self._interrupted = True

    async def _ensure_groups(self) -> None:
        for name in self.streams:
            try:
                await self.client.xgroup_create(name, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _claim_keyed(self, limit: int) -> list[TaskRecord]:
        """Tasks with a concurrency key are claimed from the store, never by id (their
        stream messages are acknowledged as stale): :mod:`chronoq.store.limits`."""
        keyed: list[TaskRecord] = []
        limited = await self.store.limits.queues()
        for queue in self.queues:
            if queue in limited and len(keyed) < limit:
                keyed += await self.store.limits.claim(
                    self.worker_id, queue, limit - len(keyed), time.time(), self.lease_seconds
                )
        return keyed

    async def fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        """Keyed tasks first (from the store), then the streams. While this worker's queues
        have keyed tasks, a read waits at most :data:`KEYED_WAIT` for messages: a freed slot
        of a key sends none, so the next claim comes from that poll."""
        keyed = await self._claim_keyed(limit)
        if len(keyed) >= limit:
            return keyed
        if keyed:
            timeout = 0.001
        elif any(q in self.store.limits.limited_now for q in self.queues):
            timeout = min(timeout, KEYED_WAIT)
        return keyed + await self._fetch(limit - len(keyed), timeout)

    async def _fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        messages: list[tuple[str, str, str]] = []  # (stream, message id, task id)
        try:
            now = time.monotonic()
            if now >= self._next_autoclaim:
                self._next_autoclaim = now + self.visibility_seconds / 2
                messages += await self._autoclaim(limit)
            if not messages:
                block = 0 if self._interrupted else max(1, int(min(timeout, 1.0) * 1000))
                messages += await self._read(limit, block)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            log.warning(
                "Redis lost the streams or consumer groups (restarted or flushed?); recreating them"
            )
            await self._ensure_groups()
            return []
        except (RedisError, OSError) as exc:
            await asyncio.sleep(self._outage.failed(exc))
            return []
        self._outage.over()
        if not messages:
            return []
        claimed = await self.store.claim_ids(
            self.worker_id, [m[2] for m in messages], time.time(), self.lease_seconds
        )
        taken = {t.id for t in claimed}
        stale = []
        for name, message_id, task_id in messages:
            if task_id in taken:
                self._inflight[task_id] = (name, message_id)
            else:  # already run, cancelled, a duplicate, or its queue is paused (resuming
                stale.append((name, message_id))  # re-publishes those)
        await self._ack(stale)
        return claimed

    async def _read(self, limit: int, block_ms: int) -> list[tuple[str, str, str]]:
        reply: Any = await self.client.xreadgroup(
            GROUP, self.worker_id, {name: ">" for name in self.streams}, count=limit, block=block_ms
        )
        found: dict[str, list[tuple[str, str, str]]] = {}
        for name, entries in reply or []:
            found[name] = [(name, mid, fields["id"]) for mid, fields in entries if fields]
        ordered = [m for name in self.streams for m in found.get(name, [])]  # bands in order
        extra = ordered[limit:]
        if extra:  # more than we can take: hand them back for others right away
            await self._release(extra)
        return ordered[:limit]

    async def _release(self, messages: list[tuple[str, str, str]]) -> None:
        """Re-publish and acknowledge messages this worker cannot take now."""
        async with self.client.pipeline(transaction=False) as pipe:
            for name, _, task_id in messages:
                pipe.xadd(name, {"id": task_id}, maxlen=MAXLEN, approximate=True)
            _ack_into(pipe, [(name, message_id) for name, message_id, _ in messages])
            await pipe.execute()

    async def _autoclaim(self, limit: int) -> list[tuple[str, str, str]]:
        taken: list[tuple[str, str, str]] = []
        idle_ms = int(self.visibility_seconds * 1000)
        for name in self.streams:
            reply: Any = await self.client.xautoclaim(
                name, GROUP, self.worker_id, idle_ms, start_id="0-0", count=limit
            )
            for mid, fields in reply[1]:
                if fields:
                    taken.append((name, mid, fields["id"]))
        if taken:
            log.info("took over %d unacknowledged messages", len(taken))
        return taken[:limit]

    async def done(self, task_ids: Sequence[str]) -> None:
        await self._ack([m for t in task_ids if (m := self._inflight.pop(t, None))])

    async def _ack(self, messages: Sequence[tuple[str, str]]) -> None:
        if not messages:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                _ack_into(pipe, messages)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # the outcome is in the store; a redelivered message finds the task done
            log.warning("could not acknowledge %d messages (%s)", len(messages), exc)


def _ack_into(pipe: Any, messages: Sequence[tuple[str, str]]) -> None:
    """Queue one XACK and one XDEL per stream for all ``(stream, message id)`` pairs."""
    by_stream: dict[str, list[str]] = {}
    for name, message_id in messages:
        by_stream.setdefault(name, []).append(message_id)
    for name, ids in by_stream.items():
        pipe.xack(name, GROUP, *ids)
        pipe.xdel(name, *ids)
