"""The executor interface and the context a running task can read."""

from __future__ import annotations

import abc
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


class TaskFailed(Exception):
    """Raise for an expected failure: the message is stored, not a traceback.

    ``retry=False`` says no later attempt can succeed (bad input, a record that is gone):
    the task goes to the dead-letter queue now instead of using up its attempts.
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may want to know about the attempt it runs in."""

    task_id: str
    name: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str


#: set while a handler runs; ``chronoq.current_task.get()`` inside a handler
current_task: ContextVar[TaskContext] = ContextVar("chronoq_current_task")


class Executor(abc.ABC):
    """Runs one task's payload and returns a JSON-serialisable result, or raises."""

    @abc.abstractmethod
    async def run(self, payload: dict[str, Any]) -> Any: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, threads)."""
