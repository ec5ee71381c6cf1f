"""The :class:`Worker`: wires the claim loop, attempts, completion buffer, heartbeats and
autoscaler to one broker and store, and runs them from start to a drained stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from chronoq import logcapture
from chronoq.backoff import Outage
from chronoq.broker import Broker, BrokerFactory, Consumer, StoreBroker
from chronoq.executors import Executor, HttpExecutor, ShellExecutor
from chronoq.executors import http as http_executor
from chronoq.executors import shell as shell_executor
from chronoq.pool import ChildRestart, ProcessPool
from chronoq.store import TaskRecord
from chronoq.store.interfaces import WorkerSide
from chronoq.watchdog import LoopWatchdog
from chronoq.worker.attempts import Attempts
from chronoq.worker.autoscale import Autoscaler
from chronoq.worker.claims import ClaimLoop
from chronoq.worker.completions import CompletionBuffer
from chronoq.worker.heartbeats import Heartbeats
from chronoq.worker.journals import LogBuffer

log = logging.getLogger("chronoq.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def builtin_executors(
    shell_allow: Iterable[str] = (),
    http_allow: Iterable[str] = (),
    shell_env_allow: Iterable[str] = (),
) -> dict[str, Executor]:
    """``chronoq.http`` always (public addresses, plus the non-public ones ``http_allow``
    permits: hostnames and CIDRs); ``chronoq.shell`` only with a non-empty allow-list, its
    payloads setting only the environment variables ``shell_env_allow`` names."""
    executors: dict[str, Executor] = {http_executor.NAME: HttpExecutor(http_allow)}
    allow = list(shell_allow)
    if allow:
        executors[shell_executor.NAME] = ShellExecutor(allow, shell_env_allow)
    return executors


class Worker:
    """Runs up to ``concurrency`` tasks at once from ``queues``.

    ``broker`` makes the broker from a :class:`~chronoq.broker.Consumer` (default: the
    store broker, with hand-offs on PostgreSQL). ``prefetch``: tasks claimed beyond the
    ``concurrency`` slots and held until one frees (keeps a process pool's children fed
    without a claim round trip between two tasks); with ``autoscale`` it follows the slots
    in proportion."""

    #: the longest a stopping worker spends recording its last results
    flush_seconds: float = 10.0

    def __init__(
        self,
        store: WorkerSide,
        executors: Mapping[str, Executor],
        *,
        queues: Iterable[str] = ("default",),
        concurrency: int = 8,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float = 5.0,
        poll_seconds: float = 1.0,
        autoscale: tuple[int, int] | None = None,
        scale_seconds: float = 1.0,
        broker: BrokerFactory | None = None,
        blocked_loop_seconds: float = 1.0,
        pool: ProcessPool | None = None,
        prefetch: int = 0,
    ) -> None:
        if autoscale is not None:
            low, high = autoscale
            if not 1 <= low <= high:
                raise ValueError(f"autoscale needs 1 <= MIN <= MAX, got {low},{high}")
        self.store = store
        self.executors = dict(executors)
        self.queues = list(queues)
        self.autoscale = autoscale
        self.id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = min(heartbeat_seconds, lease_seconds / 3)
        self.poll_seconds = poll_seconds
        self._stopping = asyncio.Event()
        consumer = Consumer(store, self.id, tuple(self.queues), lease_seconds)
        self.broker: Broker = (broker or StoreBroker.for_consumer)(consumer)
        self.completions = CompletionBuffer(store, self.broker, self.id)
        #: what attempts log, print and report as progress, written apart from completions
        self.journals = LogBuffer(store, self.id)
        self.attempts = Attempts(
            store, self.executors, self.id, lease_seconds, self._stopping, self.journals
        )
        #: set by a ``drain`` from the API: running tasks finish however long they take
        self.draining = False
        self._drain_seconds = 30.0
        self._drain_deadline: float | None = None
        self.claims = ClaimLoop(
            self.broker,
            self.attempts.run,
            self.completions.add,
            concurrency=concurrency,
            prefetch=prefetch,
            poll_seconds=poll_seconds,
            stopping=self._stopping,
            outage=Outage("claiming tasks", log, first=poll_seconds, cap=max(5.0, poll_seconds)),
        )
        self.autoscaler: Autoscaler | None = None
        if autoscale is not None:
            self.claims.resize(autoscale[0])
            self.autoscaler = Autoscaler(self.claims, *autoscale, scale_seconds, self.id)
        self.heartbeats = Heartbeats(self)
        #: warns of handlers that block the loop and renews leases while they do
        self.watchdog = LoopWatchdog(self, store.sibling, blocked_loop_seconds)
        #: the child processes that run process-pool handlers (``--pool process``)
        self.pool = pool
        self._pool_reporter: asyncio.Task[None] | None = None
        #: set once registered and claiming (readiness, and whoever waits for it)
        self.serving = asyncio.Event()

    # -- what it holds -----------------------------------------------------------------------
    @property
    def concurrency(self) -> int:
        """Slots: attempts run at once (moved by the autoscaler)."""
        return self.claims.concurrency

    @property
    def prefetch(self) -> int:
        """Tasks claimed ahead of the slots (follows them)."""
        return self.claims.prefetch

    @property
    def running(self) -> dict[str, asyncio.Task[None]]:
        return self.claims.running

    @property
    def held(self) -> dict[str, TaskRecord]:
        """Claimed tasks waiting for a slot in the claim loop (the broker may hold more:
        :meth:`leased` counts both)."""
        return self.claims.held

    @property
    def processed(self) -> int:
        return self.claims.processed

    def leased(self) -> list[str]:
        """Every task leased to this worker that it runs or holds: the leases it renews."""
        return [*self.claims.running, *self.claims.held, *self.broker.held_ids()]

    def known(self) -> set[str]:
        """Every task this worker holds, runs, or ran without its outcome recorded yet."""
        return {*self.leased(), *self.completions.task_ids()}

    def start(self, task: TaskRecord) -> None:
        """Run a task claimed for this worker now, or hold it until a slot frees."""
        self.claims.start(task)

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming new tasks; :meth:`run` returns once running tasks finished.
        Hand-offs that reached the broker before the stop start in the slots free now,
        as if the claim loop had fetched them already; the rest go back."""
        if not self._stopping.is_set():
            for task in self.broker.take_held(self.concurrency - len(self.running)):
                self.claims.start(task)
        self._stopping.set()
        self.broker.interrupt()

    def control(self, what: str) -> None:
        """Act on what the API asked (:meth:`Heartbeats.run` reads it): ``drain`` stops
        claiming and lets every running task finish, then the worker exits; ``stop`` is a
        graceful shutdown, as SIGTERM (running tasks get the drain time, then are retried)."""
        if what == "drain" and not self._stopping.is_set():
            log.info("worker %s draining (asked through the API)", self.id)
            self.draining = True
            self.stop()
        elif what == "stop" and not (self._stopping.is_set() and not self.draining):
            log.info("worker %s stopping (asked through the API)", self.id)
            if self.draining:  # the drain time counts from the stop, not from the drain
                self._drain_deadline = time.monotonic() + self._drain_seconds
            self.draining = False
            self.stop()

    def describe(self) -> dict[str, Any]:
        """What the registry shows of this worker beyond its counters (``/v1/workers``)."""
        detail: dict[str, Any] = {
            "tasks": sorted(self.running)[:100],
            "stopping": self._stopping.is_set(),
        }
        if self.pool is not None:
            detail["children"] = self.pool.describe()
        return detail

    def stop_now(self) -> None:
        """Stop, and end running attempts now (a second SIGTERM): their handlers are
        cancelled (process-pool children killed) and the tasks go back to be retried."""
        self.stop()
        for job in self.running.values():
            job.cancel()

    async def run(self, drain_seconds: float = 30.0) -> None:
        """Work until :meth:`stop`; then drain running tasks (up to ``drain_seconds``)."""
        self._drain_seconds = drain_seconds
        await self._start_pool()
        await self.broker.start()
        unsubscribe = self.store.hub.on_cancel(self.cancel_local)
        await self._register()
        flusher = asyncio.create_task(self.completions.run(), name="chronoq-flush")
        heartbeat = asyncio.create_task(self.heartbeats.run(), name="chronoq-heartbeat")
        logcapture.install()
        journals = asyncio.create_task(self.journals.run(), name="chronoq-task-logs")
        background = [heartbeat, journals]
        if self.autoscaler is not None:
            background.append(asyncio.create_task(self.autoscaler.run(), name="chronoq-autoscale"))
        self.watchdog.start()
        log.info(
            "worker %s serving queues %s with concurrency %d",
            self.id,
            ",".join(self.queues),
            self.concurrency,
        )
        self.serving.set()
        try:
            await self.claims.run()
            try:
                await self.broker.quiesce()
            except Exception:
                log.warning("worker %s could not withdraw its hand-off offers", self.id)
            await self._drain(drain_seconds)
            await self._release_held()
        finally:
            unsubscribe()
            for job in background:
                job.cancel()
            self.completions.closing()
            await asyncio.gather(*background, return_exceptions=True)
            await self._close_pool()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.journals.flush(), self.flush_seconds)
            logcapture.uninstall()
            await self.completions.final_flush(flusher, self.flush_seconds)
            await self.watchdog.stop()
            await self.broker.close()
            for executor in self.executors.values():
                await executor.close()
            try:
                await self.store.workers.heartbeat(
                    self.id, 0, self.processed, self.concurrency, time.time(), status="stopped"
                )
            except Exception:
                log.warning("could not mark worker %s stopped", self.id)
            log.info("worker %s stopped after %d tasks", self.id, self.processed)

    async def _register(self) -> None:
        """Enter the registry, retrying while the store is unreachable: a worker that
        starts during an outage waits for the store instead of exiting (a stop ends
        the wait; :meth:`run` then stops at once, having claimed nothing)."""
        outage = Outage("registering the worker", log, cap=5.0)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                try:
                    await self.store.workers.register(
                        self.id,
                        socket.gethostname(),
                        os.getpid(),
                        self.queues,
                        self.concurrency,
                        time.time(),
                        handlers=list(self.executors),
                    )
                except self.store.outage_errors as exc:
                    await asyncio.wait([stopping], timeout=outage.failed(exc))
                    continue
                outage.over()
                return
        finally:
            stopping.cancel()

    async def _drain(self, drain_seconds: float) -> None:
        running = self.running
        if not running:
            return
        log.info(
            "worker %s draining %d running tasks (%d held)",
            self.id,
            len(running),
            len(self.held) + len(self.broker.held_ids()),
        )
        self._drain_deadline = time.monotonic() + drain_seconds

        def left() -> float:
            assert self._drain_deadline is not None
            return self._drain_deadline - time.monotonic()

        # a late hand-off joins them; a drain asked through the API waits for them all
        while running and (self.draining or left() > 0):
            timeout = 1.0 if self.draining else min(left(), 1.0)  # a stop may end a drain
            await asyncio.wait(list(running.values()), timeout=timeout)
        pending = set(running.values())
        if pending:
            log.warning(
                "worker %s: %d tasks still running after %.0fs; they will be retried",
                self.id,
                len(pending),
                drain_seconds,
            )
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _release_held(self) -> None:
        """Tasks claimed for this worker that it never started go back to their queue."""
        held = [*self.claims.take_held(), *self.broker.take_held()]
        if held:
            try:
                await self.store.release(self.id, held)
            except Exception:
                log.warning(
                    "worker %s could not give back %d tasks; they are retried when "
                    "their leases run out",
                    self.id,
                    len(held),
                )

    def cancel_local(self, task_id: str) -> None:
        """Stop a task this worker holds or runs (cancelled, or no longer its own)."""
        if self.claims.held.pop(task_id, None) is not None or self.broker.forget(task_id):
            log.info("cancelled task %s before it started", task_id)
            return
        job = self.running.get(task_id)
        if job is not None:
            log.info("cancelling running task %s", task_id)
            job.cancel()

    # -- process pool ------------------------------------------------------------------------
    async def _start_pool(self) -> None:
        pool = self.pool
        if pool is None:
            return
        await pool.start()
        dirty = asyncio.Event()

        def restarted(restart: ChildRestart) -> None:
            dirty.set()
            self.store.events.publish_workers([restart.event(self.id, time.time())])

        pool.on_restart = restarted
        self._pool_reporter = asyncio.create_task(
            self._report_restarts(pool, dirty), name="chronoq-pool-report"
        )

    async def _report_restarts(self, pool: ProcessPool, dirty: asyncio.Event) -> None:
        """Keep the registry's child restart count current (at most one write a second)."""
        while True:
            await dirty.wait()
            dirty.clear()
            try:
                await self.store.workers.child_restarts(self.id, pool.restarts)
            except Exception:
                log.warning("could not record child restarts of worker %s", self.id)
                dirty.set()
            await asyncio.sleep(1.0)

    async def _close_pool(self) -> None:
        if self.pool is None:
            return
        if self._pool_reporter is not None:
            self._pool_reporter.cancel()
            await asyncio.gather(self._pool_reporter, return_exceptions=True)
        await self.pool.close()
        with contextlib.suppress(Exception):
            await self.store.workers.child_restarts(self.id, self.pool.restarts)
