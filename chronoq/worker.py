"""The worker: claims due tasks, runs them with their executor, reports each attempt's end.

Hot path, per batch of tasks: one claim statement, the handlers, one batched completion
transaction. It sleeps only when the queues are empty, until the hub wakes it (a task
was submitted or promoted) or ``poll_seconds`` pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from chronoq.broker import Broker, StoreBroker
from chronoq.executors import Executor, HttpExecutor, ShellExecutor, TaskContext, current_task
from chronoq.executors import http as http_executor
from chronoq.executors import shell as shell_executor
from chronoq.executors.base import TaskFailed
from chronoq.pool import PoolFailure, ProcessPool
from chronoq.store import Completion, Store, TaskRecord
from chronoq.store.base import dumps

log = logging.getLogger("chronoq.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def builtin_executors(shell_allow: Iterable[str] = (),
                      http_allow: Iterable[str] = ()) -> dict[str, Executor]:
    """``chronoq.http`` always (public addresses, plus the non-public ones ``http_allow``
    permits: hostnames and CIDRs); ``chronoq.shell`` only with a non-empty allow-list."""
    executors: dict[str, Executor] = {http_executor.NAME: HttpExecutor(http_allow)}
    allow = list(shell_allow)
    if allow:
        executors[shell_executor.NAME] = ShellExecutor(allow)
    return executors


class Worker:
    """Runs up to ``concurrency`` tasks at once from ``queues``."""

    def __init__(
        self,
        store: Store,
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
        broker: Callable[[Worker], Broker] | None = None,
        pool: ProcessPool | None = None,
        prefetch: int = 0,
    ) -> None:
        self.store = store
        self.executors = dict(executors)
        self.queues = list(queues)
        if autoscale is not None:
            low, high = autoscale
            if not 1 <= low <= high:
                raise ValueError(f"autoscale needs 1 <= MIN <= MAX, got {low},{high}")
            concurrency = low
        self.autoscale = autoscale
        self.scale_seconds = scale_seconds
        self.concurrency = concurrency
        self._saturated = False
        self._idle_rounds = 0
        self.id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = min(heartbeat_seconds, lease_seconds / 3)
        self.poll_seconds = poll_seconds
        self.running: dict[str, asyncio.Task[None]] = {}
        #: handed-off tasks that found every slot busy (they start as slots free up) or
        #: came while stopping (they go back to the queue)
        self.held: dict[str, TaskRecord] = {}
        self.processed = 0
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._done: list[Completion] = []
        self._recording: list[Completion] = []  # the results being written now
        self._done_event = asyncio.Event()
        self._closing = False
        self.broker = (broker or _store_broker)(self)
        #: the child processes that run process-pool handlers (``--pool process``)
        self.pool = pool
        #: tasks claimed beyond ``concurrency``, held until a slot frees: keeps a process
        #: pool's children fed without a claim round trip between two tasks
        self.prefetch = prefetch
        self._pool_reporter: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming new tasks; :meth:`run` returns once running tasks finished."""
        self._stopping.set()
        self.broker.interrupt()

    def stop_now(self) -> None:
        """Stop, and end running attempts now (a second SIGTERM): their handlers are
        cancelled (process-pool children killed) and the tasks go back to be retried."""
        self.stop()
        for job in self.running.values():
            job.cancel()

    async def run(self, drain_seconds: float = 30.0) -> None:
        """Work until :meth:`stop`; then drain running tasks (up to ``drain_seconds``)."""
        await self._start_pool()
        await self.broker.start()
        unsubscribe = self.store.hub.on_cancel(self._cancel_local)
        await self.store.register_worker(self.id, socket.gethostname(), os.getpid(),
                                         self.queues, self.concurrency, time.time())
        flusher = asyncio.create_task(self._flush_loop(), name="chronoq-flush")
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="chronoq-heartbeat")
        scaler = asyncio.create_task(self._scale_loop(), name="chronoq-autoscale")
        log.info("worker %s serving queues %s with concurrency %d", self.id,
                 ",".join(self.queues), self.concurrency)
        try:
            await self._claim_loop()
            try:
                await self.broker.quiesce()
            except Exception:
                log.warning("worker %s could not withdraw its hand-off offers", self.id)
            await self._drain(drain_seconds)
            await self._release_held()
        finally:
            unsubscribe()
            heartbeat.cancel()
            scaler.cancel()
            self._closing = True  # the flusher finishes its batch, never cut mid-write
            self._done_event.set()
            await asyncio.gather(heartbeat, scaler, flusher, return_exceptions=True)
            await self._close_pool()
            await self._flush_all()
            await self.broker.close()
            for executor in self.executors.values():
                await executor.close()
            try:
                await self.store.worker_heartbeat(self.id, 0, self.processed, self.concurrency,
                                                  time.time(), status="stopped")
            except Exception:
                log.warning("could not mark worker %s stopped", self.id)
            log.info("worker %s stopped after %d tasks", self.id, self.processed)

    async def _claim_loop(self) -> None:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                self._fill()
                free = self.concurrency + self.prefetch - len(self.running) - len(self.held)
                if free <= 0 or (self.held and free <= self.prefetch // 2):
                    self._slot_free.clear()
                    await _first(self._slot_free, stopping, timeout=None)
                    continue
                try:
                    claimed = await self.broker.fetch(free, self.poll_seconds)
                except Exception:
                    log.exception("claim failed; retrying in %.1fs", self.poll_seconds)
                    await _first(None, stopping, timeout=self.poll_seconds)
                    continue
                if len(claimed) == free:
                    self._saturated = True  # the queue had at least as much as we could take
                for task in claimed:
                    self._start(task)
        finally:
            stopping.cancel()

    async def _scale_loop(self) -> None:
        """``autoscale=(MIN, MAX)``: double the slots while every slot is busy and the queue
        still had work; halve them after 5 quiet periods with less than half busy."""
        if self.autoscale is None:
            return
        low, high = self.autoscale
        while True:
            await asyncio.sleep(self.scale_seconds)
            busy = len(self.running)
            before = self.concurrency
            if self._saturated and busy >= self.concurrency and self.concurrency < high:
                self.concurrency = min(high, self.concurrency * 2)
                self._idle_rounds = 0
            elif busy < self.concurrency / 2 and self.concurrency > low:
                self._idle_rounds += 1
                if self._idle_rounds >= 5:
                    self.concurrency = max(low, self.concurrency // 2)
                    self._idle_rounds = 0
            else:
                self._idle_rounds = 0
            self._saturated = False
            if self.concurrency != before:
                log.info("worker %s concurrency %d -> %d (%d busy)", self.id, before,
                         self.concurrency, busy)
                self._slot_free.set()

    async def _drain(self, drain_seconds: float) -> None:
        if not self.running:
            return
        log.info("worker %s draining %d running tasks (%d held)", self.id, len(self.running),
                 len(self.held))
        deadline = time.monotonic() + drain_seconds
        while self.running and time.monotonic() < deadline:  # a late hand-off joins them
            await asyncio.wait(list(self.running.values()), timeout=deadline - time.monotonic())
        pending = set(self.running.values())
        if pending:
            log.warning("worker %s: %d tasks still running after %.0fs; they will be retried",
                        self.id, len(pending), drain_seconds)
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- running one task --------------------------------------------------------------------
    def _start(self, task: TaskRecord) -> None:
        """Run a task now claimed for this worker, or hold it until a slot frees up."""
        if task.id in self.running or task.id in self.held:
            return
        if len(self.running) >= self.concurrency or self._stopping.is_set():
            self.held[task.id] = task
            return
        job = asyncio.create_task(self._execute(task), name=f"chronoq-task-{task.id}")
        self.running[task.id] = job

    async def _release_held(self) -> None:
        """Tasks handed to this worker that it never started go back to their queue."""
        held, self.held = list(self.held.values()), {}
        if held:
            try:
                await self.store.release(self.id, held)
            except Exception:
                log.warning("worker %s could not give back %d tasks; they are retried when "
                            "their leases run out", self.id, len(held))

    def _fill(self) -> None:
        """Start held tasks while slots are free (not once stopping: they go back)."""
        while self.held and len(self.running) < self.concurrency \
                and not self._stopping.is_set():
            task_id = next(iter(self.held))
            self._start(self.held.pop(task_id))

    async def _execute(self, task: TaskRecord) -> None:
        context = TaskContext(task.id, task.name, task.queue, task.attempts, task.max_attempts,
                              self.id)
        token = current_task.set(context)
        started = time.perf_counter()
        completion: Completion | None = None
        try:
            executor = self.executors.get(task.name)
            if executor is None:
                raise TaskFailed(f"no handler named {task.name!r} on worker {self.id}")
            async with asyncio.timeout(task.timeout_seconds):
                result = await executor.run(task.payload)
            completion = Completion.success(task, time.time(), result)
        except TimeoutError:
            completion = Completion.failure(
                task, time.time(), "timeout", f"timed out after {task.timeout_seconds}s")
        except TaskFailed as exc:
            completion = Completion.failure(task, time.time(), "failed", str(exc))
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise  # cancelled by request: the store already closed the attempt
            completion = Completion.failure(
                task, time.time(), "lost", "worker shut down before the task finished",
                retry_now=True)
        except PoolFailure as exc:  # a child's exception, or the child's death
            completion = Completion.failure(task, time.time(), exc.outcome, exc.error,
                                            exc.traceback)
        except Exception as exc:
            completion = Completion.failure(
                task, time.time(), "failed", f"{type(exc).__name__}: {exc}",
                traceback.format_exc())
        finally:
            current_task.reset(token)
            self.running.pop(task.id, None)
            self._fill()
            self._slot_free.set()
            self.processed += 1
            if completion is not None:
                if completion.result is not None and not _json_safe(completion):
                    completion = Completion.failure(
                        task, completion.finished_at, "failed",
                        f"result is not JSON-serialisable: {type(completion.result).__name__}")
                self._done.append(completion)
                self._done_event.set()
                if log.isEnabledFor(logging.INFO):
                    _log_completion(task, completion, time.perf_counter() - started)

    def _cancel_local(self, task_id: str) -> None:
        if self.held.pop(task_id, None) is not None:
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
        pool.on_restart = lambda _why: dirty.set()
        self._pool_reporter = asyncio.create_task(self._report_restarts(pool, dirty),
                                                  name="chronoq-pool-report")

    async def _report_restarts(self, pool: ProcessPool, dirty: asyncio.Event) -> None:
        """Keep the registry's child restart count current (at most one write a second)."""
        while True:
            await dirty.wait()
            dirty.clear()
            try:
                await self.store.worker_child_restarts(self.id, pool.restarts)
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
            await self.store.worker_child_restarts(self.id, self.pool.restarts)

    # -- reporting ---------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._done_event.wait()
            self._done_event.clear()
            await self._flush_all()

    async def _flush_all(self) -> None:
        delay = 0.1
        while self._done:
            batch, self._done = self._done, []
            self._recording = batch
            try:
                await self.store.complete(batch)
                await self.broker.done([c.task_id for c in batch])
            except Exception:
                log.exception("recording %d results failed; retrying in %.1fs", len(batch), delay)
                self._done[:0] = batch
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                self._recording = []

    def _known(self) -> set[str]:
        """Every task this worker holds, runs, or ran without its outcome recorded yet."""
        return {*self.running, *self.held, *(c.task_id for c in self._done),
                *(c.task_id for c in self._recording)}

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            ids = [*self.running, *self.held]
            try:
                now = time.time()
                lost = await self.store.heartbeat(self.id, ids, now + self.lease_seconds)
                await self.store.worker_heartbeat(self.id, len(ids), self.processed,
                                                  self.concurrency, now)
            except Exception:
                log.exception("heartbeat failed")
                continue
            for task_id in lost:
                log.warning("task %s is no longer ours (cancelled or lease lost); stopping it",
                            task_id)
                self._cancel_local(task_id)
            await self._adopt_strays(now)

    async def _adopt_strays(self, now: float) -> None:
        """Start tasks handed to this worker whose notification was lost. Leases of the
        tasks it knows were renewed at most one heartbeat ago; a stray's is older than two."""
        try:
            strays = await self.broker.strays(
                sorted(self._known()), now + self.lease_seconds - 2 * self.heartbeat_seconds)
        except Exception:
            log.exception("looking for lost hand-offs failed")
            return
        known = self._known()
        for task in strays:
            if task.id not in known:
                self._start(task)


def _store_broker(worker: Worker) -> Broker:
    return StoreBroker(worker.store, worker.id, worker.queues, worker.lease_seconds,
                       start=worker._start)


def _log_completion(task: TaskRecord, completion: Completion, elapsed: float) -> None:
    what = f"{task.name}[{task.id}] attempt {task.attempts}/{task.max_attempts}"
    extra = task.log_fields(completion.outcome, duration=round(elapsed, 6))
    if completion.outcome == "succeeded":
        log.info("%s succeeded in %.3fs: %.200s", what, elapsed, dumps(completion.result),
                 extra=extra)
    else:
        after = (f"retry in {completion.next_run_at - completion.finished_at:.1f}s"
                 if completion.next_run_at is not None else completion.status.value)
        log.warning("%s %s in %.3fs (%s): %s", what, completion.outcome, elapsed, after,
                    completion.error, extra=extra)


def _json_safe(completion: Completion) -> bool:
    try:
        dumps(completion.result)
    except TypeError:
        return False
    return True


async def _first(event: asyncio.Event | None, stopping: asyncio.Future[Any],
                 timeout: float | None) -> None:
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

