"""``TaskHandle``: what ``delay()`` returns — the submitted task, its status and its result.

Waiting for a result does not poll. The waiter subscribes to the store's event bus
*before* it reads the task, so a completion committed in between is not missed; it re-reads
the task only when an event about it arrives. The bus carries every change made through
this process's store, and, with a Redis URL, those of other processes too. Without Redis,
PostgreSQL has no cross-process completion notification (its LISTEN channels carry work and
cancellations, not results), so the waiter also re-reads the task every ``recheck_seconds``
(default 2 s): a bound on the latency of a result finished by another process, at one
primary-key read per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from chronoq.events import Subscription
from chronoq.models import Attempt, Task
from chronoq.states import TERMINAL, Status

if TYPE_CHECKING:
    from chronoq.app import App

R = TypeVar("R")

#: the default interval of the fallback re-read while waiting (see the module docstring)
RECHECK_SECONDS = 2.0


class TaskDead(Exception):
    """The task used up its attempts (or failed permanently): ``error`` is its last error,
    ``attempts`` every attempt, oldest first, and ``task`` the task as it ended."""

    def __init__(self, task: Task) -> None:
        super().__init__(
            f"task {task.id} ({task.name}) is dead after {task.attempts} attempt(s): {task.error}"
        )
        self.task = task
        self.error = task.error
        self.attempts: list[Attempt] = task.attempt_history or []


class TaskCancelled(Exception):
    """The task was cancelled before it succeeded; ``task`` is the task as it ended."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id} ({task.name}) was cancelled")
        self.task = task


class ResultTimeout(TimeoutError):
    """The task did not finish within the timeout; ``task`` is its last state seen."""

    def __init__(self, task: Task, timeout: float) -> None:
        super().__init__(f"task {task.id} ({task.name}) is still {task.status} after {timeout:g}s")
        self.task = task


class TaskHandle(Generic[R]):
    """A submitted task. ``R`` is its handler's return type; the result is that value as
    JSON decodes it (a tuple comes back as a list, for instance).

    Sync methods (``result``, ``status``…) block; each has an ``a``-prefixed async twin.
    """

    def __init__(self, app: App, task: Task) -> None:
        self.app = app
        #: the task as submitted (what ``delay()`` returned before handles existed)
        self.task = task

    @property
    def id(self) -> str:
        return self.task.id

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task.name} {self.id}>"

    async def aget(self) -> Task:
        """The task as it is now, with its attempt history."""
        return await self.app.aget(self.id)

    async def astatus(self) -> Status:
        return (await self.app.aget(self.id, history=False)).status

    async def acancel(self) -> Task:
        return await self.app.acancel(self.id)

    async def aretry(self) -> Task:
        return await self.app.aretry(self.id)

    async def aresult(
        self, timeout: float | None = None, *, recheck_seconds: float = RECHECK_SECONDS
    ) -> R:
        """Wait for the task to finish and return its result.

        Raises :class:`TaskDead`, :class:`TaskCancelled`, or :class:`ResultTimeout` (a
        ``TimeoutError``) when ``timeout`` seconds pass first (``None``: wait forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self.app.store
        with store.events.subscribe() as events:  # before the read: no lost wake-up
            while True:
                task = await self.app.aget(self.id, history=False)
                if task.status in TERMINAL:
                    return await self._outcome(task)
                left = recheck_seconds if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise ResultTimeout(task, cast(float, timeout))
                await changed(events, {self.id}, min(left, recheck_seconds))

    async def _outcome(self, task: Task) -> R:
        if task.status is Status.SUCCEEDED:
            return cast(R, task.result)
        if task.status is Status.CANCELLED:
            raise TaskCancelled(task)
        raise TaskDead(await self.app.aget(self.id))

    # -- blocking twins, for sync code -------------------------------------------------------
    def get(self) -> Task:
        return self.app.run_sync(self.aget())

    def status(self) -> Status:
        return self.app.run_sync(self.astatus())

    def cancel(self) -> Task:
        return self.app.run_sync(self.acancel())

    def retry(self) -> Task:
        return self.app.run_sync(self.aretry())

    def result(
        self, timeout: float | None = None, *, recheck_seconds: float = RECHECK_SECONDS
    ) -> R:
        """:meth:`aresult` for sync code (not from inside the app's event loop)."""
        return self.app.run_sync(self.aresult(timeout, recheck_seconds=recheck_seconds))


async def changed(events: Subscription, task_ids: Container[str], seconds: float) -> None:
    """Return when an event about one of ``task_ids`` arrives (or some were dropped from the full
    subscription queue, one of them maybe ours), or after ``seconds``."""
    deadline = time.monotonic() + seconds
    dropped = events.dropped
    while (left := deadline - time.monotonic()) > 0:
        try:
            batch = await asyncio.wait_for(events.queue.get(), left)
        except TimeoutError:
            return
        if events.dropped != dropped or any(event.task_id in task_ids for event in batch):
            return
