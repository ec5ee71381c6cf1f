"""The task state machine: every status, every allowed transition, and retry backoff.

All code that changes a task's status asks this module which source statuses a
transition may start from, so the rules live in exactly one place::

    scheduled ──▶ queued ──▶ running ──▶ succeeded
        │           │          ├──────▶ failed ──▶ queued (retry after backoff)
        │           │          └──────▶ dead   (attempts exhausted, or a permanent failure:
        │           │                           the dead-letter queue)
        └───────────┴──────────┴──────▶ cancelled

``failed`` and ``dead`` tasks can be sent back to the queue by hand (``retry``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


TERMINAL: frozenset[Status] = frozenset({Status.SUCCEEDED, Status.DEAD, Status.CANCELLED})

#: target status -> statuses it may be reached from
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.SCHEDULED, Status.FAILED, Status.DEAD}),
    Status.RUNNING: frozenset({Status.QUEUED}),
    Status.SUCCEEDED: frozenset({Status.RUNNING}),
    Status.FAILED: frozenset({Status.RUNNING}),
    Status.DEAD: frozenset({Status.RUNNING}),
    Status.CANCELLED: frozenset({Status.SCHEDULED, Status.QUEUED, Status.RUNNING, Status.FAILED}),
}

#: statuses whose tasks wait for their ``run_at`` and are promoted to ``queued`` by the scheduler
WAITING: frozenset[Status] = frozenset({Status.SCHEDULED, Status.FAILED})
#: statuses a user may send back to the queue with ``retry``
RETRYABLE: frozenset[Status] = frozenset({Status.FAILED, Status.DEAD})


class InvalidTransition(Exception):
    """A task cannot move from its current status to the requested one."""

    def __init__(
        self, task_id: str, current: Status, target: Status, message: str | None = None
    ) -> None:
        super().__init__(f"task {task_id} is {current}; {message or f'it cannot become {target}'}")
        self.task_id = task_id
        self.current = current
        self.target = target


def sources(target: Status) -> frozenset[Status]:
    """The statuses from which a task may move to ``target``."""
    return TRANSITIONS[target]


def check(task_id: str, current: Status, target: Status) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> target`` is allowed."""
    if current not in TRANSITIONS[target]:
        raise InvalidTransition(task_id, current, target)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``delay(n) = min(base * factor**(n-1), max)`` ± ``jitter`` fraction."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after ``attempt`` (1-based) failed."""
        raw = min(self.base * self.factor ** max(attempt - 1, 0), self.max)
        if self.jitter <= 0:
            return raw
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))


#: attempt outcomes meaning the process running the attempt died under it, so the handler
#: gave no verdict and the task itself may be what killed it: ``lost`` (its worker stopped
#: renewing the lease; the reaper's outcome) and ``crashed`` (a process-pool child died).
DIED: tuple[str, ...] = ("lost", "crashed")
#: the retries of tasks whose attempts died together are spread over this many seconds, so
#: they come due apart and are not claimed as one batch by one worker
DEATH_SPREAD = 5.0
#: a task whose attempts died twice or more waits this long more before its retry,
#: doubling with each further death (capped at :data:`QUARANTINE_MAX`)
QUARANTINE = 30.0
QUARANTINE_MAX = 3600.0


def after_death(deaths: int, rng: random.Random | None = None) -> float:
    """Seconds to add to a task's backoff when attempt number ``deaths`` of its attempts
    died with its process (1: the first such death). Every such retry is jittered over
    :data:`DEATH_SPREAD`; from the second death on the task is a suspect (a poison task
    kills whatever runs beside it), and waits :data:`QUARANTINE` more, doubling per death,
    so it comes due after the neighbours that died with it were retried, on its own."""
    extra = (rng or random).uniform(0.0, DEATH_SPREAD)
    if deaths >= 2:
        extra += min(QUARANTINE * 2 ** (deaths - 2), QUARANTINE_MAX)
    return extra


def after_failure(attempt: int, max_attempts: int, *, retry: bool = True) -> Status:
    """Where a task goes when attempt number ``attempt`` failed; ``retry=False`` for a
    failure that no later attempt can mend (no handler, a payload that does not fit it)."""
    return Status.FAILED if retry and attempt < max_attempts else Status.DEAD
