"""The API process's recent events, numbered, so a WebSocket client that reconnects with
the cursor of the last event it saw gets every event it missed, once, then live ones.

One :class:`EventLog` per API process reads the event bus (its own process's events and,
with Redis, every other process's) into a ring of the last :data:`KEEP` events, each with
a sequence number. A socket does not get a queue of its own: it tails the ring from its
position, so replay and live delivery are one loop, a slow client cannot lose events
(it only falls further behind), and none is sent twice.

A cursor is ``<log id>-<sequence>``. It stops meaning anything when the ring has moved
past it, when the API process restarted (another log id), or when the log's own bus
subscription overflowed (events may be missing before that point): the socket then says
``reset`` and the client reloads what it shows. The log starts with the first socket and
stops :data:`IDLE_SECONDS` after the last one closed, so a server nobody watches builds
no events.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass

from chronoq.events import EventBus, Subscription, TaskEvent

#: events kept for replay, per API process
KEEP = 20_000
#: the log stops this long after its last socket closed (its cursors become resets)
IDLE_SECONDS = 300.0

_CURSOR = re.compile(r"^([0-9a-f]{12})-(\d{1,18})$")


class BadCursor(ValueError):
    """A ``since`` that is not a cursor this API hands out."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a socket resumes: after sequence ``after``; ``reset`` when the cursor could
    not be honoured (the client must reload), with the ``reason``."""

    after: int
    reset: bool = False
    reason: str = ""


class EventLog:
    """The ring of recent events and the task that fills it from ``bus``."""

    def __init__(self, bus: EventBus, keep: int = KEEP) -> None:
        self.bus = bus
        self.id = uuid.uuid4().hex[:12]
        self.keep = keep
        self.events: list[TaskEvent] = []  # events[0] has sequence number offset + 1
        self.offset = 0
        self.last = 0  # sequence number of the newest event (0: none yet)
        self.floor = 0  # cursors below this may have missed events: they reset
        self.sockets = 0
        self._tick = asyncio.Event()
        self.subscription: Subscription | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    # -- lifetime ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._feeder is not None

    def attach(self) -> None:
        """A socket opens: start the log if it is not running."""
        self.sockets += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._feeder is None:
            self.subscription = self.bus.subscribe(maxsize=10_000)
            self._feeder = asyncio.create_task(self._feed(), name="chronoq-event-log")

    def detach(self) -> None:
        """A socket closed: stop the log once none has been open for a while."""
        self.sockets -= 1
        if self.sockets == 0 and self._feeder is not None:
            self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self.stop)

    def stop(self) -> None:
        """Stop reading the bus; the next start is a new log (old cursors reset)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._feeder is not None:
            self._feeder.cancel()
            self._feeder = None
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.id = uuid.uuid4().hex[:12]
        self.events.clear()
        self.offset = self.floor = self.last
        self._wake()

    async def _feed(self) -> None:
        subscription = self.subscription
        assert subscription is not None
        dropped = 0
        async for batch in subscription:
            if subscription.dropped != dropped:  # the bus dropped some: no cursor so far holds
                dropped = subscription.dropped
                self.floor = self.last + 1
            self.events.extend(batch)
            self.last += len(batch)
            if len(self.events) >= 2 * self.keep:  # trim in chunks: slicing stays O(limit)
                cut = len(self.events) - self.keep
                del self.events[:cut]
                self.offset += cut
            self._wake()

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # -- reading -----------------------------------------------------------------------------
    def cursor(self, seq: int) -> str:
        return f"{self.id}-{seq}"

    @property
    def first(self) -> int:
        """Sequence number of the oldest event kept (at least the last :data:`KEEP`)."""
        return self.offset + 1

    def position(self, since: str) -> Position:
        """Where a socket asking for events after ``since`` starts (``latest``: now)."""
        if since == "latest":
            return Position(self.last)
        match = _CURSOR.match(since)
        if match is None:
            raise BadCursor(f"since={since[:40]!r} is not an event cursor (or 'latest')")
        log_id, seq = match.group(1), int(match.group(2))
        if log_id != self.id:
            return Position(self.last, True, "the server restarted or forgot that cursor")
        if seq > self.last:
            raise BadCursor("that cursor is ahead of the stream")
        if seq < self.floor or seq < self.first - 1:
            return Position(self.last, True, "that cursor is older than the events kept")
        return Position(seq)

    def after(self, seq: int, limit: int = 500) -> tuple[list[TaskEvent], int] | None:
        """Up to ``limit`` events after ``seq`` and the sequence of the last one; None when
        ``seq`` fell out of the ring (or behind the floor) while the socket was sending."""
        if seq < self.floor or seq < self.first - 1:
            return None
        start = seq - self.offset
        chosen = self.events[start : start + limit]
        return chosen, seq + len(chosen)

    async def wait(self, seq: int, log_id: str) -> None:
        """Return once there is an event after ``seq``, or the log restarted (its id is no
        longer ``log_id``)."""
        while self.last <= seq and self.id == log_id:
            await self._tick.wait()


def event_log(state: object, bus: EventBus) -> EventLog:
    """The API's event log (made on first use, kept on ``state``)."""
    log: EventLog | None = getattr(state, "event_log", None)
    if log is None or log.bus is not bus:
        log = EventLog(bus)
        setattr(state, "event_log", log)  # noqa: B010 - Starlette's State is dynamic
    return log


def close(state: object) -> None:
    """Stop the log (at shutdown)."""
    log: EventLog | None = getattr(state, "event_log", None)
    if log is not None:
        log.stop()
