"""Retrying a dependency that fails (PostgreSQL, Redis): how long to wait, and what to log.

A background loop that retries at once after an error spins while its dependency is down
(the scheduler logged 300-500 tracebacks a second during a PostgreSQL outage), and one that
logs every failure in full floods the log for as long as the outage lasts. Each such loop
keeps an :class:`Outage`: :meth:`~Outage.failed` counts a failure and returns the delay
(``first``, doubling, at most ``cap``); the first failure is logged with its traceback,
every further one as one short line, and :meth:`~Outage.over` logs one line when the
dependency answers again. (A task's retry backoff is :class:`chronoq.states.Backoff`.)
"""

from __future__ import annotations

import logging
import time


class Outage:
    """The failures in a row of one retry loop doing ``what`` (e.g. "scheduler round")."""

    def __init__(
        self,
        what: str,
        log: logging.Logger,
        *,
        first: float = 1.0,
        cap: float = 30.0,
        level: int = logging.ERROR,
    ) -> None:
        self.what = what
        self.log = log
        self.first = first
        self.cap = max(cap, first)
        self.level = level  #: of the first failure's line (the one with the traceback)
        self.failures = 0  #: in a row, since the last success
        self._since = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def next_delay(self) -> float:
        """Seconds to wait after the failure that comes next."""
        return min(self.first * 2.0**self.failures, self.cap)

    def failed(self, exc: BaseException) -> float:
        """Count and log a failure; returns the seconds to wait before retrying."""
        delay = self.next_delay()
        self.failures += 1
        if self.failures == 1:
            self._since = time.monotonic()
            self.log.log(self.level, "%s failed; retrying in %.1fs", self.what, delay, exc_info=exc)
        else:
            self.log.warning(
                "%s failed again (%d in a row, %.0fs): %s: %s; retrying in %.1fs",
                self.what,
                self.failures,
                time.monotonic() - self._since,
                type(exc).__name__,
                exc,
                delay,
            )
        return delay

    def over(self) -> None:
        """The loop's call went through: log the recovery once, start afresh."""
        if self.failures:
            self.log.warning(
                "%s works again after %d failures in %.1fs",
                self.what,
                self.failures,
                time.monotonic() - self._since,
            )
            self.failures = 0
