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

from chronoq import states
from chronoq.backoff import Outage
from chronoq.broker import Broker, StoreBroker
from chronoq.executors import Executor, HttpExecutor, ShellExecutor, TaskContext, current_task
from chronoq.executors import http as http_executor
from chronoq.executors import shell as shell_executor
from chronoq.executors.base import TaskFailed
from chronoq.pool import ChildRestart, PoolFailure, ProcessPool
from chronoq.store import Completion, Store, TaskRecord
from chronoq.store.base import dumps
from chronoq.store.records import storable
from chronoq.watchdog import LoopWatchdog

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
    """Runs up to ``concurrency`` tasks at once from ``queues``."""

    #: the longest a stopping worker spends recording its last results
    flush_seconds: float = 10.0

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
        blocked_loop_seconds: float = 1.0,
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
        #: warns of handlers that block the loop and renews leases while they do
        self.watchdog = LoopWatchdog(self, store.sibling, blocked_loop_seconds)
        #: store or broker failures in a row (one traceback, then a line per retry)
        self._claims = Outage("claiming tasks", log, first=poll_seconds, cap=max(5.0, poll_seconds))
        self._beats = Outage(
            "heartbeat", log, first=self.heartbeat_seconds, cap=self.heartbeat_seconds
        )  # it keeps its period
        self._flushes = Outage("recording results", log, first=0.1, cap=5.0, level=logging.WARNING)
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
        await self.store.register_worker(
            self.id,
            socket.gethostname(),
            os.getpid(),
            self.queues,
            self.concurrency,
            time.time(),
            handlers=list(self.executors),
        )
        flusher = asyncio.create_task(self._flush_loop(), name="chronoq-flush")
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="chronoq-heartbeat")
        scaler = asyncio.create_task(self._scale_loop(), name="chronoq-autoscale")
        self.watchdog.start()
        log.info(
            "worker %s serving queues %s with concurrency %d",
            self.id,
            ",".join(self.queues),
            self.concurrency,
        )
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
            await asyncio.gather(heartbeat, scaler, return_exceptions=True)
            await self._close_pool()
            await self._final_flush(flusher)
            await self.watchdog.stop()
            await self.broker.close()
            for executor in self.executors.values():
                await executor.close()
            try:
                await self.store.worker_heartbeat(
                    self.id, 0, self.processed, self.concurrency, time.time(), status="stopped"
                )
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
                except Exception as exc:
                    await _first(None, stopping, timeout=self._claims.failed(exc))
                    continue
                self._claims.over()
                if len(claimed) == free:
                    self._saturated = True  # the queue had at least as much as we could take
                for task in claimed:
                    self._start(task)
                if claimed:
                    # let them take their first step before the next claim opens a write
                    # transaction: a handler that blocks the loop at once then blocks with
                    # no lock held, so the watchdog can still renew leases on SQLite
                    await asyncio.sleep(0)
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
                log.info(
                    "worker %s concurrency %d -> %d (%d busy)",
                    self.id,
                    before,
                    self.concurrency,
                    busy,
                )
                self._slot_free.set()

    async def _drain(self, drain_seconds: float) -> None:
        if not self.running:
            return
        log.info(
            "worker %s draining %d running tasks (%d held)",
            self.id,
            len(self.running),
            len(self.held),
        )
        deadline = time.monotonic() + drain_seconds
        while self.running and time.monotonic() < deadline:  # a late hand-off joins them
            await asyncio.wait(list(self.running.values()), timeout=deadline - time.monotonic())
        pending = set(self.running.values())
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
                log.warning(
                    "worker %s could not give back %d tasks; they are retried when "
                    "their leases run out",
                    self.id,
                    len(held),
                )

    def _fill(self) -> None:
        """Start held tasks while slots are free (not once stopping: they go back)."""
        while self.held and len(self.running) < self.concurrency and not self._stopping.is_set():
            task_id = next(iter(self.held))
            self._start(self.held.pop(task_id))

    async def _execute(self, task: TaskRecord) -> None:
        context = TaskContext(
            task.id, task.name, task.queue, task.attempts, task.max_attempts, self.id
        )
        token = current_task.set(context)
        started = time.perf_counter()
        completion: Completion | None = None
        try:
            executor = self.executors.get(task.name)
            if executor is None:
                raise await self._no_handler(task)
            async with asyncio.timeout(task.timeout_seconds):
                result = await executor.run(task.payload)
            completion = Completion.success(task, time.time(), result)
        except TimeoutError:
            completion = Completion.failure(
                task, time.time(), "timeout", f"timed out after {task.timeout_seconds}s"
            )
        except TaskFailed as exc:
            completion = _task_failed(task, exc)
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise  # cancelled by request: the store already closed the attempt
            completion = Completion.failure(
                task,
                time.time(),
                "lost",
                "worker shut down before the task finished",
                retry_now=True,
            )
        except PoolFailure as exc:  # a child's exception, or the child's death
            completion = await self._pool_failure(task, exc)
        except Exception as exc:
            completion = Completion.failure(
                task, time.time(), "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()
            )
        finally:
            current_task.reset(token)
            self.running.pop(task.id, None)
            self._fill()
            self._slot_free.set()
            self.processed += 1
            if completion is not None:
                completion = _storable_result(completion)
                self._done.append(completion)
                self._done_event.set()
                if log.isEnabledFor(logging.INFO):
                    _log_completion(task, completion, time.perf_counter() - started)

    async def _no_handler(self, task: TaskRecord) -> TaskFailed:
        """The failure of a task this worker has no handler for: permanent when no other
        live worker of the task's queue has one either, else retried (to reach that one)."""
        names = sorted(self.executors)
        mine = ", ".join(names[:10]) + (f" and {len(names) - 10} more" * (len(names) > 10))
        try:
            others = await self.store.served(time.time() - self.lease_seconds, excluding=self.id)
        except Exception:
            log.warning("could not ask the worker registry who serves %s", task.name)
            return TaskFailed(f"no handler named {task.name!r} on worker {self.id}")
        if others.serves(task.queue, task.name):
            return TaskFailed(
                f"no handler named {task.name!r} on worker {self.id}; "
                f"another worker of queue {task.queue!r} has one"
            )
        return TaskFailed(
            f"no handler named {task.name!r} on any live worker of queue "
            f"{task.queue!r} (worker {self.id} has: {mine or 'none'})",
            retry=False,
        )

    async def _pool_failure(self, task: TaskRecord, exc: PoolFailure) -> Completion:
        """A handler's exception in a child (retried unless it said ``retry=False``), or the
        child's death: spread and, for a repeat victim, delayed like the reaper's ``lost``."""
        if exc.outcome not in states.DIED:
            if exc.retry:
                return Completion.failure(task, time.time(), exc.outcome, exc.error, exc.traceback)
            return Completion.failure(
                task,
                time.time(),
                exc.outcome,
                f"{exc.error} (permanent failure: not retried)",
                exc.traceback,
                retry=False,
            )
        try:
            deaths = (await self.store.deaths([task.id])).get(task.id, 0) + 1
        except Exception:  # the store is down: spread the retry all the same
            deaths = 1
        return Completion.died(task, time.time(), exc.outcome, exc.error, deaths)

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

    async def _flush_all(self, *, final: bool = False) -> None:
        """Record every finished attempt, retrying with backoff (:attr:`_flushes`) while the
        store or broker is unreachable; once stopping, only the ``final`` flush retries."""
        while self._done:
            batch, self._done = self._done, []
            self._recording = batch
            try:
                written, left, error = await self._record(batch)
                if written:
                    await self.broker.done([c.task_id for c in written])
            except asyncio.CancelledError:  # a final flush out of time
                self._done[:0] = batch
                raise
            except Exception as exc:  # the broker: recording the batch again changes nothing
                left, error = batch, exc
            finally:
                self._recording = []
            if not left:
                self._flushes.over()
                continue
            self._done[:0] = left
            assert error is not None  # left behind only by a failure
            delay = self._flushes.failed(error)
            if self._closing and not final:
                return
            await asyncio.sleep(delay)

    async def _record(
        self, batch: list[Completion]
    ) -> tuple[list[Completion], list[Completion], Exception | None]:
        """Write a batch in one transaction. If the store refuses it (not an outage: a value
        it cannot hold), write the attempts one by one, so one bad row never holds up the
        others. Returns (written, left, outage): ``left`` must wait, the store being
        unreachable (``outage`` says why)."""
        try:
            refusal = await self._refusal(batch)
        except self.store.outage_errors as exc:
            return [], batch, exc
        if refusal is None:
            return batch, [], None
        if len(batch) > 1:
            log.warning(
                "the store refused a batch of %d results (%s); writing them one by one",
                len(batch),
                type(refusal).__name__,
            )
        for index, completion in enumerate(batch):
            try:
                await self._record_one(completion, refusal if len(batch) == 1 else None)
            except self.store.outage_errors as exc:
                return batch[:index], batch[index:], exc
        return batch, [], None

    async def _record_one(self, completion: Completion, refusal: Exception | None) -> None:
        """Write one attempt (``refusal``: the store refused it already). One the store
        refuses is recorded as a failed attempt saying why; if even that is refused, it is
        dropped (its lease lapses and the task runs again). Raises an outage error."""
        if refusal is None:
            refusal = await self._refusal([completion])
            if refusal is None:
                return
        log.error(
            "the store refused the result of task %s attempt %d (%s: %.300r); "
            "recording the attempt as failed",
            completion.task_id,
            completion.attempt,
            type(refusal).__name__,
            str(refusal),
        )
        failed = completion.refused(refusal)
        if failed is not None:
            refusal = await self._refusal([failed])
            if refusal is None:
                return
        log.error(
            "the store refused task %s attempt %d's failure too (%s); it runs again "
            "once its lease lapses",
            completion.task_id,
            completion.attempt,
            type(refusal).__name__,
        )

    async def _refusal(self, completions: list[Completion]) -> Exception | None:
        """Write ``completions``: None once written, else why the store refused them.
        Raises the store's outage errors (it is unreachable, nothing was refused)."""
        try:
            await self.store.complete(completions)
        except Exception as exc:
            if isinstance(exc, self.store.outage_errors):
                raise
            return exc
        return None

    async def _final_flush(self, flusher: asyncio.Task[None]) -> None:
        """Wait for the flusher's last write, then record what is left, for at most
        :attr:`flush_seconds` in all: a stopping worker never hangs on a store that will
        not take its results. Those it gives up on run again when their leases lapse."""
        try:
            async with asyncio.timeout(self.flush_seconds):
                await asyncio.gather(flusher, return_exceptions=True)
                await self._flush_all(final=True)
        except TimeoutError:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        if self._done:
            ids = [c.task_id for c in self._done]
            log.error(
                "worker %s stops with %d results not recorded after %.0fs (tasks %s); "
                "they run again once their leases lapse",
                self.id,
                len(ids),
                self.flush_seconds,
                ", ".join(ids[:20]) + (" ..." * (len(ids) > 20)),
            )

    def _known(self) -> set[str]:
        """Every task this worker holds, runs, or ran without its outcome recorded yet."""
        return {
            *self.running,
            *self.held,
            *(c.task_id for c in self._done),
            *(c.task_id for c in self._recording),
        }

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            ids = [*self.running, *self.held]
            try:
                now = time.time()
                lost = await self.store.heartbeat(self.id, ids, now + self.lease_seconds)
                await self.store.worker_heartbeat(
                    self.id, len(ids), self.processed, self.concurrency, now
                )
            except Exception as exc:
                self._beats.failed(exc)
                continue
            self._beats.over()
            for task_id in lost:
                log.warning(
                    "task %s is no longer ours (cancelled or lease lost); stopping it", task_id
                )
                self._cancel_local(task_id)
            await self._adopt_strays(now)

    async def _adopt_strays(self, now: float) -> None:
        """Start tasks handed to this worker whose notification was lost. Leases of the
        tasks it knows were renewed at most one heartbeat ago; a stray's is older than two."""
        try:
            strays = await self.broker.strays(
                sorted(self._known()), now + self.lease_seconds - 2 * self.heartbeat_seconds
            )
        except Exception:
            log.exception("looking for lost hand-offs failed")
            return
        known = self._known()
        for task in strays:
            if task.id not in known:
                self._start(task)


def _store_broker(worker: Worker) -> Broker:
    return StoreBroker(
        worker.store, worker.id, worker.queues, worker.lease_seconds, start=worker._start
    )


def _log_completion(task: TaskRecord, completion: Completion, elapsed: float) -> None:
    what = f"{task.name}[{task.id}] attempt {task.attempts}/{task.max_attempts}"
    extra = task.log_fields(completion.outcome, duration=round(elapsed, 6))
    if completion.outcome == "succeeded":
        log.info(
            "%s succeeded in %.3fs: %.200s", what, elapsed, dumps(completion.result), extra=extra
        )
    else:
        after = (
            f"retry in {completion.next_run_at - completion.finished_at:.1f}s"
            if completion.next_run_at is not None
            else completion.status.value
        )
        log.warning(
            "%s %s in %.3fs (%s): %s",
            what,
            completion.outcome,
            elapsed,
            after,
            completion.error,
            extra=extra,
        )


def _task_failed(task: TaskRecord, exc: TaskFailed) -> Completion:
    """The completion for a ``TaskFailed``: retried, or dead at once with ``retry=False``."""
    if exc.retry:
        return Completion.failure(task, time.time(), "failed", str(exc))
    return Completion.failure(
        task, time.time(), "failed", f"{exc} (permanent failure: not retried)", retry=False
    )


def _storable_result(completion: Completion) -> Completion:
    """The completion with a result the store can hold (lone surrogates written as escape
    text), or a failure when JSON cannot hold the result at all."""
    if completion.result is None:
        return completion
    try:
        completion.result = storable(completion.result)
    except TypeError:
        task = completion.task
        assert task is not None
        return Completion.failure(
            task,
            completion.finished_at,
            "failed",
            f"result is not JSON-serialisable: {type(completion.result).__name__}",
        )
    return completion


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
