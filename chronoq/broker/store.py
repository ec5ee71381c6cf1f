"""The default broker: claim straight from the store, woken by the hub; on PostgreSQL,
also take hand-offs (tasks inserted straight into this worker's hands while it was idle).

Hand-offs live here, from their notification to the fetch that returns them: the
notification (or the row read back by id) lands in :attr:`StoreBroker._held` and wakes a
waiting :meth:`~StoreBroker.fetch`, which returns what is held before it claims anything.
A hand-off that wakes a fetch is returned without a claim statement, and the next fetch
goes on waiting out the same poll period unless a queue was signalled meanwhile: a
handed-off task costs no claim, as when the worker started it from the notification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import orjson

from chronoq.broker.base import Broker, Consumer
from chronoq.notify import worker_channel
from chronoq.states import Status
from chronoq.store import NotFound, TaskRecord
from chronoq.store.interfaces import ClaimStore

log = logging.getLogger("chronoq.worker")


class _Signal(asyncio.Event):
    """The hub's "a queue has work" event, which also wakes the broker's waiting fetch."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake()


class StoreBroker(Broker):
    """Claims queue by queue (each claim walks the queue's index); the first queue asked
    rotates so no queue starves the others. Sleeps on the hub's ready event.

    With ``handoffs`` (the default), each claim also offers the slots it left free, and a
    task handed off to this worker is held from its notification until a fetch returns
    it (offers can lag behind by a few, so more can arrive than the worker has slots)."""

    def __init__(
        self,
        store: ClaimStore,
        worker_id: str,
        queues: Sequence[str],
        lease_seconds: float,
        *,
        handoffs: bool = True,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.queues = list(queues)
        self.lease_seconds = lease_seconds
        self.handoffs = handoffs
        self._ready = store.hub.ready_event(self.queues, _Signal(self._wake))
        self._interrupted = asyncio.Event()
        #: the waiting fetch's future: resolved by a queue's signal or a hand-off
        self._waiter: asyncio.Future[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._lookups: set[asyncio.Task[None]] = set()
        #: handed-off tasks no fetch returned yet, in arrival order
        self._held: dict[str, TaskRecord] = {}
        #: when a fetch a hand-off cut short would have stopped waiting (monotonic)
        self._resume: float | None = None

    @classmethod
    def for_consumer(cls, consumer: Consumer) -> StoreBroker:
        """The worker's default broker."""
        return cls(consumer.store, consumer.worker_id, consumer.queues, consumer.lease_seconds)

    async def start(self) -> None:
        if self.handoffs:
            self._unsubscribe = self.store.hub.on_message(
                worker_channel(self.worker_id), self._handed
            )

    async def quiesce(self) -> None:
        if self._unsubscribe is not None:
            await self.store.withdraw_offers(self.worker_id)
            await asyncio.gather(*self._lookups)  # hand-offs by id still being read

    async def close(self) -> None:
        self.store.hub.discard(self._ready)
        if self._unsubscribe is not None:
            self._unsubscribe()
        for lookup in self._lookups:
            lookup.cancel()

    def held_ids(self) -> list[str]:
        return list(self._held)

    def forget(self, task_id: str) -> bool:
        return self._held.pop(task_id, None) is not None

    def take_held(self, most: int | None = None) -> list[TaskRecord]:
        return self._take(len(self._held) if most is None else most)

    async def strays(self, known: Sequence[str], lease_before: float) -> list[TaskRecord]:
        if not self.handoffs:
            return []
        tasks = await self.store.strays(self.worker_id, known, lease_before)
        if tasks:
            log.warning(
                "worker %s: the hand-off of %d tasks never arrived (%s); starting them now",
                self.worker_id,
                len(tasks),
                ", ".join(t.id for t in tasks),
            )
        return self.store.started(tasks, time.time())

    def interrupt(self) -> None:
        self._interrupted.set()
        self._ready.set()

    # -- hand-offs ---------------------------------------------------------------------------
    def _handed(self, payload: str) -> None:
        """A hand-off arrived: the task row as JSON, or its id when the row is too long."""
        if payload.startswith("{"):
            self._hold(self.store.claimed([orjson.loads(payload)], time.time()))
        else:
            lookup = asyncio.get_running_loop().create_task(self._look_up(payload))
            self._lookups.add(lookup)
            lookup.add_done_callback(self._lookups.discard)

    async def _look_up(self, task_id: str) -> None:
        try:
            task = await self.store.get_task(task_id)
        except NotFound:
            return
        except Exception:
            log.exception(
                "could not read handed-off task %s; its lease will expire and it will be retried",
                task_id,
            )
            return
        if task.status is Status.RUNNING and task.worker_id == self.worker_id:
            self._hold(self.store.started([task], time.time()))

    def _hold(self, tasks: list[TaskRecord]) -> None:
        for task in tasks:
            self._held.setdefault(task.id, task)
        if self._held:
            self._wake()

    def _take(self, limit: int) -> list[TaskRecord]:
        """Up to ``limit`` held tasks, oldest first, no longer held."""
        if not self._held or limit <= 0:
            return []
        if limit >= len(self._held):
            taken, self._held = list(self._held.values()), {}
            return taken
        return [self._held.pop(task_id) for task_id in list(self._held)[:limit]]

    # -- fetching ----------------------------------------------------------------------------
    async def fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        resume, self._resume = self._resume, None
        if resume is not None and (self._ready.is_set() or time.monotonic() >= resume):
            resume = None  # a queue was signalled, or the poll period is over: claim
        tasks = self._take(limit)
        if len(tasks) == limit:  # held hand-offs fill it: no claim (a queue's signal stays
            self._resume = resume  # set for the next fetch)
            return tasks
        if resume is None:
            self._ready.clear()  # armed before looking: a submit from now on wakes us
            tasks += await self._claim(limit - len(tasks))
            tasks += self._take(limit - len(tasks))  # handed off during the claim
            if tasks:
                return tasks
            resume = time.monotonic() + timeout
        elif tasks:
            self._resume = resume
            return tasks
        if not self._interrupted.is_set():
            await self._wait(resume)
        tasks = self._take(limit)
        if tasks and not self._ready.is_set():
            self._resume = resume  # woken by a hand-off alone: wait on next time
        return tasks

    async def _claim(self, limit: int) -> list[TaskRecord]:
        claimed: list[TaskRecord] = []
        for queue in self.queues:
            if len(claimed) >= limit:
                break
            claimed += await self.store.claim(
                self.worker_id,
                queue,
                limit - len(claimed),
                time.time(),
                self.lease_seconds,
                offer=self.queues if self.handoffs else (),
            )
        if len(self.queues) > 1:
            self.queues.append(self.queues.pop(0))
        return claimed

    def _wake(self) -> None:
        """Resolve the waiting fetch's future, if one waits."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, until: float) -> None:
        """Until a queue is signalled, a hand-off arrives, or ``until`` (monotonic). One
        future and one timer: no task per wait (this runs once per hand-off)."""
        timeout = until - time.monotonic()
        if timeout <= 0 or self._ready.is_set() or (self.handoffs and self._held):
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
