"""The claim loop: keeps the worker's slots busy with tasks fetched from its broker.

It asks the broker for as many tasks as it has room for — the free slots plus the
prefetch — and starts each in a slot, holding those beyond the slots (:attr:`held`) until
one frees up. It waits only when it has no room, or in the broker's fetch while the queues
are empty. The prefetch is a fixed number of tasks per slot, so it follows the slots when
the autoscaler moves them (and, with a process pool, the children with them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chronoq.backoff import Outage
from chronoq.broker import Broker
from chronoq.store import Completion, TaskRecord


class ClaimLoop:
    """Runs up to ``concurrency`` attempts at once (``attempt`` runs one; its completion
    goes to ``finished``) and holds up to ``prefetch`` more claimed ahead.

    ``prefetch`` is the number claimed ahead at ``concurrency``; :meth:`resize` scales it
    with the slots (4 per child for a process pool by default)."""

    def __init__(
        self,
        broker: Broker,
        attempt: Callable[[TaskRecord], Awaitable[Completion | None]],
        finished: Callable[[Completion], None],
        *,
        concurrency: int,
        prefetch: int,
        poll_seconds: float,
        stopping: asyncio.Event,
        outage: Outage,
    ) -> None:
        self.broker = broker
        self.attempt = attempt
        self.finished = finished
        self.poll_seconds = poll_seconds
        self.stopping = stopping
        self._outage = outage  # store or broker failures in a row
        self._per_slot = (prefetch, max(1, concurrency))  # prefetch/concurrency, kept exact
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.running: dict[str, asyncio.Task[None]] = {}
        #: claimed tasks waiting for a slot: prefetched, a hand-off beyond the free slots,
        #: or one that came while stopping (those go back to the queue)
        self.held: dict[str, TaskRecord] = {}
        self.processed = 0
        #: the last fetch filled all the room there was (the queue had more): the
        #: autoscaler's sign of a backlog
        self.saturated = False
        self.slot_free = asyncio.Event()

    def resize(self, concurrency: int) -> None:
        """Change the number of slots; the prefetch follows in proportion."""
        prefetch, base = self._per_slot
        self.concurrency = concurrency
        self.prefetch = prefetch * concurrency // base
        self.slot_free.set()

    async def run(self) -> None:
        """Claim and start tasks until ``stopping`` is set."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while not self.stopping.is_set():
                self.fill()
                free = self.concurrency + self.prefetch - len(self.running) - len(self.held)
                if free <= 0 or (self.held and free <= self.prefetch // 2):
                    self.slot_free.clear()
                    await _first(self.slot_free, stopping, timeout=None)
                    continue
                try:
                    claimed = await self.broker.fetch(free, self.poll_seconds)
                except Exception as exc:
                    await _first(None, stopping, timeout=self._outage.failed(exc))
                    continue
                self._outage.over()
                if len(claimed) == free:
                    self.saturated = True  # the queue had at least as much as we could take
                for task in claimed:
                    self.start(task)
                if claimed:
                    # let them take their first step before the next claim opens a write
                    # transaction: a handler that blocks the loop at once then blocks with
                    # no lock held, so the watchdog can still renew leases on SQLite
                    await asyncio.sleep(0)
        finally:
            stopping.cancel()

    def start(self, task: TaskRecord) -> None:
        """Run a task now claimed for this worker, or hold it until a slot frees up."""
        if task.id in self.running or task.id in self.held:
            return
        if len(self.running) >= self.concurrency or self.stopping.is_set():
            self.held[task.id] = task
            return
        job = asyncio.create_task(self._run(task), name=f"chronoq-task-{task.id}")
        self.running[task.id] = job

    def fill(self) -> None:
        """Start held tasks while slots are free (not once stopping: they go back)."""
        while self.held and len(self.running) < self.concurrency and not self.stopping.is_set():
            task_id = next(iter(self.held))
            self.start(self.held.pop(task_id))

    def take_held(self) -> list[TaskRecord]:
        """Remove and return every held task (a stopping worker gives them back)."""
        held, self.held = list(self.held.values()), {}
        return held

    async def _run(self, task: TaskRecord) -> None:
        completion: Completion | None = None
        try:
            completion = await self.attempt(task)
        finally:
            self.running.pop(task.id, None)
            self.fill()
            self.slot_free.set()
            self.processed += 1
            if completion is not None:
                self.finished(completion)


async def _first(
    event: asyncio.Event | None, stopping: asyncio.Future[Any], timeout: float | None
) -> None:
    """Wait until ``event`` is set, ``stopping`` resolves, or ``timeout`` passes."""
    waiters: list[asyncio.Future[Any]] = [stopping]
    waiter = None
    if event is not None:
        waiter = asyncio.ensure_future(event.wait())
        waiters.append(waiter)
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if waiter is not None:
            waiter.cancel()
