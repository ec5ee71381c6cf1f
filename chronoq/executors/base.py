"""The executor interface and the context a running task can read."""

from __future__ import annotations

import abc
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol


class TaskFailed(Exception):
    """Raise for an expected failure: the message is stored, not a traceback.

    ``retry=False`` says no later attempt can succeed (bad input, a record that is gone):
    the task goes to the dead-letter queue now instead of using up its attempts.
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Journal(Protocol):
    """Where an attempt's captured output and progress go (:mod:`chronoq.logcapture`): the
    worker's log buffer, or, in a process-pool child, the pipe to the worker."""

    def write(self, stream: str, text: str) -> None:
        """One captured line (``stream``: ``log``, ``stdout`` or ``stderr``)."""

    def progress(self, value: float, message: str | None) -> None:
        """The attempt's latest progress, 0 to 1."""


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may want to know about the attempt it runs in."""

    task_id: str
    name: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    #: where captured output and progress go; None outside a worker (a handler called directly)
    journal: Journal | None = field(default=None, repr=False, compare=False)

    def progress(self, value: float, message: str | None = None) -> None:
        """Report how far the attempt got: ``value`` from 0 to 1 (clamped), with an optional
        ``message`` such as ``"step 2 of 5"``. Stored on the task (the latest value wins),
        sent as an event, shown as a bar in the dashboard. Cheap: the worker writes the
        latest value at most twice a second, so call it as often as you like."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"progress needs a number from 0 to 1, got {value!r}") from None
        if number != number:  # NaN
            raise ValueError("progress cannot be NaN")
        if self.journal is None:
            return
        text = None if message is None else str(message)[:500]
        self.journal.progress(min(max(number, 0.0), 1.0), text)


#: set while a handler runs; ``chronoq.current_task.get()`` inside a handler
current_task: ContextVar[TaskContext] = ContextVar("chronoq_current_task")


class Executor(abc.ABC):
    """Runs one task's payload and returns a JSON-serialisable result, or raises."""

    @abc.abstractmethod
    async def run(self, payload: dict[str, Any]) -> Any: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, threads)."""
