"""Heartbeats: every ``heartbeat_seconds`` the worker renews the leases of every task it
holds or runs, refreshes its row in the worker registry (with what it runs and its pool's
children), stops the tasks that are no longer its own (cancelled, or their lease lost),
acts on what the API asked of it (``drain``, ``stop``: read back by the same statement),
and asks its broker for hand-offs whose notification never arrived."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from chronoq.backoff import Outage
from chronoq.broker import Broker
from chronoq.store import TaskRecord
from chronoq.store.interfaces import WorkerStore
from chronoq.watchdog import Watched

log = logging.getLogger("chronoq.worker")


class Beating(Watched, Protocol):
    """What the heartbeat reads from and does to its worker (beyond what the watchdog,
    which makes the same heartbeat while the loop is stuck, reads)."""

    @property
    def store(self) -> WorkerStore: ...
    @property
    def broker(self) -> Broker: ...
    def known(self) -> set[str]: ...
    def cancel_local(self, task_id: str) -> None: ...
    def start(self, task: TaskRecord) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def control(self, what: str) -> None: ...


class Heartbeats:
    """The heartbeat loop of ``worker``; failures back off at its own period."""

    def __init__(self, worker: Beating) -> None:
        self.worker = worker
        period = worker.heartbeat_seconds
        self._outage = Outage("heartbeat", log, first=period, cap=period)  # it keeps its period

    async def run(self) -> None:
        worker = self.worker
        while True:
            await asyncio.sleep(worker.heartbeat_seconds)
            ids = worker.leased()
            try:
                now = time.time()
                lost = await worker.store.heartbeat(worker.id, ids, now + worker.lease_seconds)
                control = await worker.store.workers.heartbeat(
                    worker.id,
                    len(ids),
                    worker.processed,
                    worker.concurrency,
                    now,
                    detail=worker.describe(),
                )
            except Exception as exc:
                self._outage.failed(exc)
                continue
            self._outage.over()
            if control is not None:
                worker.control(control)
            # a task that ended while the heartbeat was in flight is done, not lost
            still = set(worker.leased()) if lost else set()
            for task_id in lost & still:
                log.warning(
                    "task %s is no longer ours (cancelled or lease lost); stopping it", task_id
                )
                worker.cancel_local(task_id)
            await self._adopt_strays(now)

    async def _adopt_strays(self, now: float) -> None:
        """Start tasks handed to this worker whose notification was lost. Leases of the
        tasks it knows were renewed at most one heartbeat ago; a stray's is older than two."""
        worker = self.worker
        try:
            strays = await worker.broker.strays(
                sorted(worker.known()), now + worker.lease_seconds - 2 * worker.heartbeat_seconds
            )
        except Exception:
            log.exception("looking for lost hand-offs failed")
            return
        known = worker.known()
        for task in strays:
            if task.id not in known:
                worker.start(task)
