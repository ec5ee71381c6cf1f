"""The default broker: claim straight from the store, woken by the hub; on PostgreSQL,
also take hand-offs (tasks inserted straight into this worker's hands while it was idle)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import orjson

from chronoq.broker.base import Broker
from chronoq.notify import worker_channel
from chronoq.states import Status
from chronoq.store import NotFound, Store, TaskRecord

log = logging.getLogger("chronoq.worker")


class StoreBroker(Broker):
    """Claims queue by queue (each claim walks the queue's index); the first queue asked
    rotates so no queue starves the others. Sleeps on the hub's ready event.

    With ``start``, each claim also offers the slots it left free, and a task handed off
    to this worker is passed to ``start`` the moment its notification arrives (``start``
    must hold it back if every slot is busy: offers can lag behind by a few)."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        queues: Sequence[str],
        lease_seconds: float,
        start: Callable[[TaskRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.queues = list(queues)
        self.lease_seconds = lease_seconds
        self._ready = store.hub.ready_event(self.queues)
        self._interrupted = asyncio.Event()
        self._start = start
        self._unsubscribe: Callable[[], None] | None = None
        self._lookups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._start is not None:
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

    async def strays(self, known: Sequence[str], lease_before: float) -> list[TaskRecord]:
        if self._start is None:
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

    def _handed(self, payload: str) -> None:
        """A hand-off arrived: the task row as JSON, or its id when the row is too long."""
        if payload.startswith("{"):
            self._begin(self.store.claimed([orjson.loads(payload)], time.time()))
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
            self._begin(self.store.started([task], time.time()))

    def _begin(self, tasks: list[TaskRecord]) -> None:
        assert self._start is not None
        for task in tasks:
            self._start(task)

    async def fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        self._ready.clear()  # armed before looking: a submit from now on wakes us
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
                offer=self.queues if self._start else (),
            )
        if len(self.queues) > 1:
            self.queues.append(self.queues.pop(0))
        if not claimed and not self._interrupted.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        return claimed
