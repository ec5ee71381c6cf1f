"""Running one attempt: the task's executor under its timeout, and the :class:`Completion`
that says how the attempt ended (success, failure, timeout, lost, a child's death)."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Mapping

from chronoq import states, tracing
from chronoq.executors import Executor, TaskContext, current_task
from chronoq.executors.base import TaskFailed
from chronoq.pool import PoolFailure
from chronoq.store import Completion, TaskRecord
from chronoq.store.base import dumps
from chronoq.store.interfaces import WorkerStore
from chronoq.store.records import storable
from chronoq.worker.journals import LogBuffer

log = logging.getLogger("chronoq.worker")


class Attempts:
    """Runs attempts for worker ``worker_id``; ``stopping`` set means a cancelled attempt
    was cut short by the worker's shutdown (retried at once), not by a cancel request."""

    def __init__(
        self,
        store: WorkerStore,
        executors: Mapping[str, Executor],
        worker_id: str,
        lease_seconds: float,
        stopping: asyncio.Event,
        journals: LogBuffer | None = None,
    ) -> None:
        self.store = store
        #: captures what each attempt logs and prints, and its progress (None: not kept)
        self.journals = journals
        self.executors = executors
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.stopping = stopping

    async def run(self, task: TaskRecord) -> Completion | None:
        """Run ``task``'s attempt; its completion, storable, or None when it was cancelled
        by request (the store closed the attempt: the cancellation propagates)."""
        journal = self.journals.begin(task) if self.journals is not None else None
        context = TaskContext(
            task.id,
            task.name,
            task.queue,
            task.attempts,
            task.max_attempts,
            self.worker_id,
            journal,
        )
        with tracing.run_span(task) as span:
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
                if not self.stopping.is_set():
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
                    task,
                    time.time(),
                    "failed",
                    f"{type(exc).__name__}: {exc}",
                    traceback.format_exc(),
                )
            finally:
                current_task.reset(token)
                if journal is not None:
                    journal.close()
            completion = _storable_result(completion)
            if log.isEnabledFor(logging.INFO):
                _log_completion(task, completion, time.perf_counter() - started)
            tracing.ended(span, completion)
        return completion

    async def _no_handler(self, task: TaskRecord) -> TaskFailed:
        """The failure of a task this worker has no handler for: permanent when no other
        live worker of the task's queue has one either, else retried (to reach that one)."""
        names = sorted(self.executors)
        mine = ", ".join(names[:10]) + (f" and {len(names) - 10} more" * (len(names) > 10))
        worker_id = self.worker_id
        try:
            others = await self.store.workers.served(
                time.time() - self.lease_seconds, excluding=worker_id
            )
        except Exception:
            log.warning("could not ask the worker registry who serves %s", task.name)
            return TaskFailed(f"no handler named {task.name!r} on worker {worker_id}")
        if others.serves(task.queue, task.name):
            return TaskFailed(
                f"no handler named {task.name!r} on worker {worker_id}; "
                f"another worker of queue {task.queue!r} has one"
            )
        return TaskFailed(
            f"no handler named {task.name!r} on any live worker of queue "
            f"{task.queue!r} (worker {worker_id} has: {mine or 'none'})",
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
