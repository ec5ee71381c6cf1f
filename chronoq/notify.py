"""In-process wake-ups: the glue that lets submit wake the scheduler and workers at once.

The store publishes here after each commit; in PostgreSQL mode a LISTEN connection
also feeds notifications from other processes in. Waiters never miss a wake-up as
long as they arm (``clear``) their event *before* they look at the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


class Hub:
    """Fan-out of three signals: a queue has work, the schedule changed, a task was cancelled."""

    def __init__(self) -> None:
        self._ready: dict[str, set[asyncio.Event]] = {}
        self._schedule: set[asyncio.Event] = set()
        self._cancel: set[Callable[[str], None]] = set()

    # -- subscribing -------------------------------------------------------------------------
    def ready_event(self, queues: Iterable[str]) -> asyncio.Event:
        """An event set whenever any of ``queues`` may have work to claim."""
        event = asyncio.Event()
        for queue in queues:
            self._ready.setdefault(queue, set()).add(event)
        return event

    def schedule_event(self) -> asyncio.Event:
        """An event set whenever a task was scheduled for later (the scheduler re-plans)."""
        event = asyncio.Event()
        self._schedule.add(event)
        return event

    def on_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(task_id)`` on cancellation; returns an unsubscribe function."""
        self._cancel.add(callback)
        return lambda: self._cancel.discard(callback)

    def discard(self, event: asyncio.Event) -> None:
        """Forget an event obtained from this hub."""
        self._schedule.discard(event)
        for events in self._ready.values():
            events.discard(event)

    # -- publishing --------------------------------------------------------------------------
    def ready(self, queues: Iterable[str]) -> None:
        for queue in queues:
            for event in self._ready.get(queue, ()):
                event.set()

    def scheduled(self) -> None:
        for event in self._schedule:
            event.set()

    def wake_all(self) -> None:
        """Wake every waiter (after a gap in notifications, everyone re-checks the store)."""
        self.ready(list(self._ready))
        self.scheduled()

    def cancelled(self, task_id: str) -> None:
        for callback in list(self._cancel):
            callback(task_id)

    def dispatch(self, message: str) -> None:
        """Apply a wire message: ``r:<queue>``, ``s`` or ``c:<task id>``."""
        kind, _, arg = message.partition(":")
        if kind == "r":
            self.ready((arg,))
        elif kind == "s":
            self.scheduled()
        elif kind == "c":
            self.cancelled(arg)
