"""In-process wake-ups: the glue that lets submit wake the scheduler and workers at once.

The store publishes here after each commit; in PostgreSQL mode a LISTEN connection
also feeds notifications from other processes in, on the channels this process's
subscribers need only (a client that only submits listens to nothing, a scheduler only to
schedule changes), so a submission wakes the workers and no one else. Waiters never miss
a wake-up as long as they arm (``clear``) their event *before* they look at the store.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable

#: notification channels (PostgreSQL LISTEN names; the triggers of migration 0009 send them)
READY = "chronoq_ready"  # payload: the queue that has work
SCHEDULE = "chronoq_schedule"  # a task or schedule became due earlier than planned
CANCEL = "chronoq_cancel"  # payload: the id of a running task that was cancelled


def worker_channel(worker_id: str) -> str:
    """The channel a worker hears its hand-offs on (migration 0010 sends them): a task
    inserted straight into its hands, as the row's JSON (or its id, when that is too long)."""
    return "chronoq_w_" + hashlib.md5(worker_id.encode()).hexdigest()[:24]


class Hub:
    """Fan-out of three signals: a queue has work, the schedule changed, a task was cancelled."""

    def __init__(self) -> None:
        self._ready: dict[str, set[asyncio.Event]] = {}
        self._schedule: set[asyncio.Event] = set()
        self._cancel: set[Callable[[str], None]] = set()
        self._messages: dict[str, Callable[[str], None]] = {}
        self.channels: set[str] = set()
        self._watchers: list[Callable[[str], None]] = []

    # -- subscribing -------------------------------------------------------------------------
    def watch(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(channel)`` for every channel a subscriber needs: those needed
        already, now, and each new one when its first subscriber arrives."""
        self._watchers.append(callback)
        for channel in sorted(self.channels):
            callback(channel)

    def unwatch(self, callback: Callable[[str], None]) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)

    def _need(self, channel: str) -> None:
        if channel not in self.channels:
            self.channels.add(channel)
            for watcher in self._watchers:
                watcher(channel)

    def ready_event(
        self, queues: Iterable[str], event: asyncio.Event | None = None
    ) -> asyncio.Event:
        """An event set whenever any of ``queues`` may have work to claim (``event``: one
        of the caller's own, e.g. a subclass that wakes something else too)."""
        event = asyncio.Event() if event is None else event
        for queue in queues:
            self._ready.setdefault(queue, set()).add(event)
        self._need(READY)
        return event

    def schedule_event(self) -> asyncio.Event:
        """An event set whenever a task was scheduled for later (the scheduler re-plans)."""
        event = asyncio.Event()
        self._schedule.add(event)
        self._need(SCHEDULE)
        return event

    def on_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(task_id)`` on cancellation; returns an unsubscribe function."""
        self._cancel.add(callback)
        self._need(CANCEL)
        return lambda: self._cancel.discard(callback)

    def on_message(self, channel: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(payload)`` for each notification on a channel of one's own (a
        worker's hand-offs); returns an unsubscribe function."""
        self._messages[channel] = callback
        self._need(channel)

        def unsubscribe() -> None:
            self._messages.pop(channel, None)

        return unsubscribe

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
        self.wake(READY)
        self.wake(SCHEDULE)

    def wake(self, channel: str) -> None:
        """Wake the waiters of ``channel`` (it was not listened to until now: they re-check
        the store). Missed cancellations are found by the workers' lease heartbeat."""
        if channel == READY:
            self.ready(list(self._ready))
        elif channel == SCHEDULE:
            self.scheduled()

    def cancelled(self, task_id: str) -> None:
        for callback in list(self._cancel):
            callback(task_id)

    def dispatch(self, channel: str, payload: str) -> None:
        """Apply a notification received on ``channel``."""
        if channel == READY:
            self.ready((payload,))
        elif channel == SCHEDULE:
            self.scheduled()
        elif channel == CANCEL:
            self.cancelled(payload)
        elif channel in self._messages:
            self._messages[channel](payload)
