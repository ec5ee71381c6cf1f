"""The default broker: claim straight from the store, woken by the hub."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from chronoq.broker.base import Broker
from chronoq.store import Store, TaskRecord


class StoreBroker(Broker):
    """Claims queue by queue (each claim walks the queue's index); the first queue asked
    rotates so no queue starves the others. Sleeps on the hub's ready event."""

    def __init__(self, store: Store, worker_id: str, queues: Sequence[str],
                 lease_seconds: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.queues = list(queues)
        self.lease_seconds = lease_seconds
        self._ready = store.hub.ready_event(self.queues)
        self._interrupted = asyncio.Event()

    async def close(self) -> None:
        self.store.hub.discard(self._ready)

    def interrupt(self) -> None:
        self._interrupted.set()
        self._ready.set()

    async def fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        self._ready.clear()  # armed before looking: a submit from now on wakes us
        claimed: list[TaskRecord] = []
        for queue in self.queues:
            if len(claimed) >= limit:
                break
            claimed += await self.store.claim(self.worker_id, queue, limit - len(claimed),
                                              time.time(), self.lease_seconds)
        if len(self.queues) > 1:
            self.queues.append(self.queues.pop(0))
        if not claimed and not self._interrupted.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        return claimed
