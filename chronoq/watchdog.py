"""The blocked-loop watchdog: notices when a handler blocks the worker's event loop, says
which task and where, and renews the worker's leases meanwhile so the task is not run twice.

An ``async def`` handler that calls blocking code (``time.sleep``, a sync HTTP client,
CPU-bound work) stops every coroutine of its worker, the heartbeat included; past the lease
its task would be retried elsewhere while it still runs here. The loop moves a timestamp
every ``tick`` (one timer callback, no I/O) and a thread reads it. Silent for longer than
``threshold``: the thread logs the task whose step is running and the loop thread's stack,
once per block. Silent for longer than the heartbeat period: it renews the leases of the
worker's tasks itself, with the worker's own heartbeat query, through a store of its own
(its own connection, driven by an event loop of the thread), until the loop answers. While
the loop answers, the thread makes no database traffic at all.

A loop blocked for good keeps its leases while the process lives, as a stuck sync handler
in a thread does. Limits: a handler holding the GIL without a break (a long C call) stops
this thread too; on SQLite, a write transaction the blocked loop left open keeps every
writer waiting.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Protocol

from chronoq.store.interfaces import WorkerStore

log = logging.getLogger("chronoq.watchdog")


class Watched(Protocol):
    """What the watchdog reads from a worker (from its own thread, while the loop is stuck)."""

    @property
    def id(self) -> str: ...
    @property
    def lease_seconds(self) -> float: ...
    @property
    def heartbeat_seconds(self) -> float: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def processed(self) -> int: ...
    @property
    def running(self) -> Mapping[str, asyncio.Task[None]]: ...
    def leased(self) -> list[str]: ...


class LoopWatchdog:
    """Watches the event loop :meth:`start` is called on; ``threshold <= 0`` turns it off.
    ``open_store`` makes the (unopened) store the thread renews leases through, or None
    when the database cannot be reached from a second connection (in-memory SQLite)."""

    def __init__(
        self, worker: Watched, open_store: Callable[[], WorkerStore | None], threshold: float
    ) -> None:
        self.worker = worker
        self.open_store = open_store
        self.threshold = threshold
        self.tick = min(0.25, threshold / 4)
        # the worker's own heartbeat is overdue once the loop was silent for a period
        self.renew_after = min(max(threshold, worker.heartbeat_seconds), worker.lease_seconds / 3)
        self.blocks = 0  #: blocks seen (longer than ``threshold``)
        self.renewals = 0  #: lease renewals the thread made
        self._last = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._store: WorkerStore | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start watching the running loop (call from it)."""
        if self.threshold <= 0:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="chronoq-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._stopping.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)

    def _beat(self) -> None:
        """On the loop: "still answering"."""
        assert self._loop is not None
        self._last = time.monotonic()
        self._handle = self._loop.call_later(self.tick, self._beat)

    # -- the thread --------------------------------------------------------------------------
    def _watch(self) -> None:
        block: float | None = None  # the last beat before the block being reported
        renewed = 0  # renewals during that block
        next_renewal = 0.0
        try:
            while not self._stopping.wait(self.tick):
                last = self._last
                if block is not None and last != block:
                    log.warning(
                        "worker %s: event loop answered again after %.1fs (leases "
                        "renewed %d times meanwhile)",
                        self.worker.id,
                        last - block,
                        renewed,
                    )
                    block, renewed = None, 0
                silent = time.monotonic() - last
                if silent < self.threshold:
                    continue
                if block is None:
                    block = last
                    self.blocks += 1
                    self._report(silent)
                if silent >= self.renew_after and time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + self.worker.heartbeat_seconds
                    renewed += self._renew(first=renewed == 0)
        finally:
            self._close()

    def _report(self, silent: float) -> None:
        """One warning per block: which task's step runs now, and the loop thread's stack."""
        running = dict(self.worker.running)
        current = asyncio.current_task(self._loop)
        culprit = next((task_id for task_id, job in running.items() if job is current), None)
        if culprit is not None:
            what = f"by task {culprit}"
        else:
            what = f"by {current.get_name() if current is not None else 'a callback'}"
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(unknown)\n"
        log.warning(
            "worker %s: event loop blocked for %.1fs (threshold %.1fs) %s; running "
            "tasks: %s; their leases are renewed from the watchdog thread until it "
            "answers. The loop thread is at:\n%s",
            self.worker.id,
            silent,
            self.threshold,
            what,
            ", ".join(sorted(running)) or "none",
            stack.rstrip(),
            extra={"task_id": culprit, "worker": self.worker.id},
        )

    def _renew(self, first: bool) -> int:
        """The worker's heartbeat, made from this thread; 1 when it was made."""
        worker = self.worker
        ids = worker.leased()
        before = self._last
        try:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
            lost = self._own_loop.run_until_complete(
                asyncio.wait_for(self._heartbeat(ids), worker.lease_seconds / 2)
            )
        except Exception as exc:
            log.warning(
                "worker %s: the watchdog could not renew %d leases: %r", worker.id, len(ids), exc
            )
            return 0
        if lost is None:
            return 0
        self.renewals += 1
        log.log(
            logging.INFO if first else logging.DEBUG,
            "worker %s: the watchdog renewed %d leases (the loop is blocked)",
            worker.id,
            len(ids) - len(lost),
        )
        if self._last == before:  # else the loop answered meanwhile: those simply finished
            for task_id in sorted(lost):
                log.warning(
                    "task %s is no longer ours (cancelled or lease lost); the worker "
                    "stops it once its loop answers",
                    task_id,
                )
        return 1

    async def _heartbeat(self, ids: list[str]) -> set[str] | None:
        if self._store is None:
            store = self.open_store()
            if store is None:
                log.warning(
                    "worker %s: this database cannot be reached from a second "
                    "connection; leases are not renewed while the loop is blocked",
                    self.worker.id,
                )
                self.renew_after = float("inf")
                return None
            await store.open()
            self._store = store
        worker = self.worker
        now = time.time()
        lost = await self._store.heartbeat(worker.id, ids, now + worker.lease_seconds)
        await self._store.workers.heartbeat(
            worker.id, len(ids), worker.processed, worker.concurrency, now
        )
        return lost

    def _close(self) -> None:
        loop, self._own_loop = self._own_loop, None
        if loop is None:
            return
        try:
            if self._store is not None:
                loop.run_until_complete(self._store.close())
        except Exception as exc:
            log.warning("watchdog store did not close cleanly: %r", exc)
        finally:
            self._store = None
            loop.close()
