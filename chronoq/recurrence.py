"""When recurring schedules fire: cron and interval rules, time zones, DST, misfires.

Cron expressions have 5 fields (minute hour day month weekday), or 6 with a leading
seconds field (``*/10 * * * * *``), or an alias (``@hourly``, ``@daily``…); day and month
names work (``0 9 * * MON-FRI``). They are evaluated in the schedule's IANA time zone.

Daylight saving time, as classic cron does it:

* a wall-clock time that does not exist (spring forward) fires once, at the shifted
  time (``30 2 * * *`` fires at 03:00 on that day);
* a wall-clock time that happens twice (fall back) fires once, on its first occurrence,
  when the expression names specific hours; expressions whose hour field is ``*`` run
  on real time and fire in both copies of the repeated hour.
"""

from __future__ import annotations

import functools
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

MisfirePolicy = Literal["skip", "run_once", "catch_up"]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: longest walk over past slots after downtime; beyond it, old slots are skipped
MAX_STEPS = 100_000
#: where :func:`check_cron` starts looking for a first fire time (any fixed date would do)
_PROBE_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def expand(expression: str) -> str:
    """Normalise whitespace and resolve aliases."""
    text = " ".join(expression.split())
    return ALIASES.get(text.lower(), text)


@functools.lru_cache(maxsize=4096)
def check_cron(expression: str) -> str:
    """The normalised expression, or ``ValueError`` saying what is wrong with it."""
    text = expand(expression)
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron expression {expression!r} has {len(fields)} fields; expected 5 "
            "(minute hour day month weekday), 6 (seconds first) or an alias such as @hourly"
        )
    try:
        it = croniter(text, _PROBE_FROM, second_at_beginning=len(fields) == 6)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None
    try:
        # croniter searches up to 50 years ahead: more than the 28-year cycle of weekdays
        # and leap years (40 across a skipped leap day such as 2100's), so a rule it finds
        # nothing for matches no date at all, e.g. 30 February or a fifth Monday on the 1st
        it.get_next(float)
    except CroniterBadDateError:
        raise ValueError(
            f"cron expression {expression!r} never fires: no date matches its day, month "
            "and weekday fields together"
        ) from None
    return text


def check_timezone(name: str) -> ZoneInfo:
    """The zone, or ``ValueError`` naming the unknown zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


#: fire times a cron Recurrence remembers before it starts over
_MEMO_SIZE = 4096


class Recurrence:
    """The fire times of a cron expression in a zone, or of a fixed interval from an anchor."""

    def __init__(
        self,
        *,
        cron: str | None = None,
        interval: float | None = None,
        timezone: str = "UTC",
        anchor: float = 0.0,
    ) -> None:
        if (cron is None) == (interval is None):
            raise ValueError("give exactly one of cron or interval_seconds")
        self.interval = interval
        self.anchor = anchor
        self.tz: tzinfo = check_timezone(timezone)
        self.cron = check_cron(cron) if cron is not None else None
        fields = self.cron.split(" ") if self.cron else []
        self.seconds_field = len(fields) == 6
        hour = fields[2 if self.seconds_field else 1] if fields else "*"
        self.fixed_hours = hour != "*"
        self._iter: croniter | None = None
        #: next fire time after t, by t: the schedules sharing a cron rule share this object
        #: (:func:`cached`) and, in a burst, the same slots, so croniter runs once per slot
        self._memo: dict[float, float] = {}

    def next_after(self, t: float) -> float:
        """The first fire time strictly after epoch second ``t``."""
        if self.interval is not None:
            return self._next_interval(t, self.interval)
        assert self.cron is not None
        found = self._memo.get(t)
        if found is None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            found = self._memo[t] = self._next_cron(t)
        return found

    def _next_cron(self, t: float) -> float:
        assert self.cron is not None
        start = datetime.fromtimestamp(t, self.tz)
        it = self._iter
        if it is None:
            it = self._iter = croniter(self.cron, start, second_at_beginning=self.seconds_field)
        else:
            it.set_current(start, force=True)
        while True:
            moment: datetime = it.get_next(datetime)
            if not (self.fixed_hours and _second_occurrence(moment, self.tz)):
                return moment.timestamp()

    def _next_interval(self, t: float, interval: float) -> float:
        """The first slot ``anchor + k * interval`` strictly after ``t``.

        Slots are always computed as ``anchor + k * interval`` (never by adding intervals
        up), so a slot has one float value however it is reached, and the scheduler's
        unique (schedule, slot) key sees it once. ``(t - anchor) // interval`` can land one
        step off when the interval is not a binary fraction (1.1 s), which returned the slot
        ``t`` itself; the loops settle ``k`` on the first slot past ``t``.
        """
        anchor = self.anchor
        if t < anchor:
            return anchor
        k = int((t - anchor) // interval) + 1
        while k > 1 and anchor + (k - 1) * interval > t:
            k -= 1
        while anchor + k * interval <= t:
            k += 1
        return anchor + k * interval

    def upcoming(self, after: float, count: int = 5, until: float | None = None) -> list[float]:
        times: list[float] = []
        t = after
        while len(times) < count:
            t = self.next_after(t)
            if until is not None and t > until:
                break
            times.append(t)
        return times


@functools.lru_cache(maxsize=16384)
def cached(cron: str | None, interval: float | None, timezone: str, anchor: float) -> Recurrence:
    """A shared :class:`Recurrence` per rule: parsing cron is the costly part of firing."""
    return Recurrence(
        cron=cron,
        interval=interval,
        timezone=timezone,
        anchor=anchor if interval is not None else 0.0,
    )


def _second_occurrence(moment: datetime, tz: tzinfo) -> bool:
    """True for the second copy of a wall-clock time repeated when clocks fall back."""
    wall = moment.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0)
    return first.utcoffset() != moment.utcoffset()


@dataclass
class FirePlan:
    """What a due schedule fires now: slots (nominal times) with their run times."""

    slots: list[float] = field(default_factory=list)
    run_at: list[float] = field(default_factory=list)
    missed: int = 0
    next_fire_at: float | None = None


def plan(
    recurrence: Recurrence,
    next_fire_at: float,
    now: float,
    *,
    policy: MisfirePolicy,
    max_catch_up: int,
    grace: float,
    end_at: float | None,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    ahead: float = 0.0,
) -> FirePlan:
    """Decide which slots from ``next_fire_at`` up to ``now`` (``now + ahead`` when
    firing ahead: those slots' tasks wait as ``scheduled`` until due) fire.

    A slot later than ``grace`` seconds is *missed* (the scheduler was down or paused):
    ``skip`` drops missed slots, ``run_once`` fires only the latest of them, ``catch_up``
    fires the latest ``max_catch_up``. On-time slots always fire.
    """
    keep = max_catch_up if policy == "catch_up" else 1
    missed: deque[float] = deque(maxlen=keep)
    on_time: list[float] = []
    dropped = 0
    slot = next_fire_at
    steps = 0
    while slot <= now + ahead and (end_at is None or slot <= end_at):
        if now - slot > grace:
            if len(missed) == missed.maxlen:
                dropped += 1
            missed.append(slot)
        else:
            on_time.append(slot)
        steps += 1
        if steps >= MAX_STEPS:
            slot = recurrence.next_after(now + ahead)
            break
        slot = recurrence.next_after(slot)
    fired = on_time if policy == "skip" else [*missed, *on_time]
    result = FirePlan(missed=dropped + (len(missed) if policy == "skip" else 0))
    result.slots = fired
    r = rng or random
    result.run_at = [s + (r.uniform(0, jitter) if jitter > 0 else 0.0) for s in fired]
    result.next_fire_at = slot if end_at is None or slot <= end_at else None
    return result
