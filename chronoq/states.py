"""Retry timing: the backoff between attempts, and where a failed attempt leaves its task.

The statuses and transitions themselves are :mod:`chronoq.lifecycle`'s (re-exported here,
where older imports find them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from chronoq.lifecycle import (
    RETRYABLE,
    TERMINAL,
    TRANSITIONS,
    WAITING,
    InvalidTransition,
    Status,
    check,
    sources,
)

__all__ = [
    "DIED",
    "RETRYABLE",
    "TERMINAL",
    "TRANSITIONS",
    "WAITING",
    "Backoff",
    "InvalidTransition",
    "Status",
    "after_death",
    "after_failure",
    "check",
    "sources",
]


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
