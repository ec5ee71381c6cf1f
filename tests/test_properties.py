"""Property tests: cron fire times for random expressions and zones, and the task state
machine driven by random operations against the real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from hypothesis.stateful import (
    run_state_machine_as_test as _run_machine,
)

from chronoq import lifecycle
from chronoq.lifecycle import (
    RETRYABLE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    Status,
    Transition,
)
from chronoq.models import TaskCreate
from chronoq.notify import worker_channel
from chronoq.recurrence import Recurrence, plan
from chronoq.store import Completion, Store, TaskRecord, create_store
from tests.conftest import PG_URL, drop_schema

# Hypothesis annotates this from 6.16x on; older releases (still allowed by pyproject) do not,
# and a typed alias keeps strict mypy quiet on both.
run_state_machine_as_test: Callable[..., None] = _run_machine

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
#: 2020-01-01 .. 2035-01-01, epoch seconds
TIMES = st.floats(1_577_836_800, 2_051_222_400, allow_nan=False)


def field(low: int, high: int) -> st.SearchStrategy[str]:
    """One cron field over ``low..high``: ``*``, a value, a list, a range or a step."""
    value = st.integers(low, high)
    ranges = st.tuples(value, value).map(sorted).map(lambda r: f"{r[0]}-{r[1]}")
    return st.one_of(
        st.just("*"),
        value.map(str),
        st.lists(value, min_size=2, max_size=4, unique=True).map(
            lambda v: ",".join(map(str, sorted(v)))
        ),
        ranges,
        st.integers(2, max(2, (high - low) // 2)).map(lambda n: f"*/{n}"),
        st.tuples(ranges, st.integers(1, 5)).map(lambda r: f"{r[0]}/{r[1]}"),
    )


#: 5-field expressions; days stop at 28 so every expression fires in every month
CRONS = st.tuples(field(0, 59), field(0, 23), field(1, 28), field(1, 12), field(0, 6)).map(" ".join)
#: the same with a fixed hour (a value or a list: no ``*``, no step over the whole day)
FIXED_HOUR_CRONS = st.tuples(
    field(0, 59),
    st.one_of(
        st.integers(0, 23).map(str),
        st.lists(st.integers(0, 23), min_size=2, max_size=3, unique=True).map(
            lambda v: ",".join(map(str, sorted(v)))
        ),
    ),
    field(1, 28),
    field(1, 12),
    field(0, 6),
).map(" ".join)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def stable_offset(moment: float, zone: ZoneInfo, margin: float = 3 * 3600) -> bool:
    """No UTC offset change within ``margin`` seconds of ``moment`` (away from DST)."""
    offsets = {datetime.fromtimestamp(moment + d, zone).utcoffset() for d in (-margin, 0, margin)}
    return len(offsets) == 1


@PROPERTY_SETTINGS
@given(cron=CRONS, zone=st.sampled_from(ZONES), times=st.lists(TIMES, min_size=1, max_size=6))
def test_next_fire_is_strictly_later_and_monotonic(
    cron: str, zone: str, times: list[float]
) -> None:
    rule = Recurrence(cron=cron, timezone=zone)  # one object: its cached iterator is reused
    fires = [(t, rule.next_after(t)) for t in times]  # in random order
    for t, fire in fires:
        assert fire > t, (cron, zone, t, fire)
    for (t1, f1), (t2, f2) in itertools.pairwise(sorted(fires)):
        assert f1 <= f2, (cron, zone, t1, f1, t2, f2)
    # asking again gives the same answer, whatever was asked in between
    for t, fire in fires:
        assert rule.next_after(t) == fire


@PROPERTY_SETTINGS
@given(cron=CRONS, zone=st.sampled_from(ZONES), start=TIMES)
def test_upcoming_never_repeats(cron: str, zone: str, start: float) -> None:
    times = Recurrence(cron=cron, timezone=zone).upcoming(start, count=20)
    assert len(times) == 20
    assert all(a < b for a, b in itertools.pairwise(times)), times
    assert times[0] > start


@PROPERTY_SETTINGS
@given(cron=FIXED_HOUR_CRONS, zone=st.sampled_from(ZONES), start=TIMES)
def test_fire_times_match_croniter_away_from_dst(cron: str, zone: str, start: float) -> None:
    tz = ZoneInfo(zone)
    rule = Recurrence(cron=cron, timezone=zone)
    assert rule.fixed_hours
    fire = rule.next_after(start)
    assume(stable_offset(fire, tz) and stable_offset(start, tz))
    local = datetime.fromtimestamp(fire, tz)
    assert local.second == 0 and local.microsecond == 0
    assert croniter.match(cron, local), (cron, zone, local)
    # and nothing earlier matches: croniter's own previous slot is before the start
    before = croniter(cron, local - timedelta(seconds=1)).get_prev(datetime)
    assume(stable_offset(before.timestamp(), tz))
    assert before.timestamp() <= start, (cron, zone, datetime.fromtimestamp(start, tz), local)


# -- interval rules ------------------------------------------------------------------------
#: intervals the API accepts, most of them not binary fractions: 1.1 s, 12.3 s, 86399.9 s…
INTERVALS = st.one_of(
    st.integers(10, 3_600_000).map(lambda n: n / 10),
    st.integers(100, 100_000).map(lambda n: n / 100),
    st.floats(1, 366 * 86400, allow_nan=False, allow_infinity=False),
)


def interval_rule(interval: float, anchor: float) -> Recurrence:
    return Recurrence(interval=interval, anchor=anchor)


@PROPERTY_SETTINGS
@given(
    interval=INTERVALS,
    anchor=TIMES,
    offset=st.floats(0, 10 * 366 * 86400),
    steps=st.integers(0, 1_000_000),
)
def test_interval_next_is_strictly_later_and_on_the_grid(
    interval: float, anchor: float, offset: float, steps: int
) -> None:
    rule = interval_rule(interval, anchor)
    slot = anchor + steps * interval  # a slot exactly as the scheduler stores it
    for t in (slot, anchor + offset, slot - 1e-6, slot + 1e-6):
        fire = rule.next_after(t)
        assert fire > t, (interval, anchor, t, fire)
        assert fire - t <= interval * 1.000001 + 1e-6, (interval, anchor, t, fire)
        k = round((fire - anchor) / interval)
        assert fire == anchor + k * interval  # one float value per slot, however reached
    assert rule.next_after(slot) == anchor + (steps + 1) * interval


@PROPERTY_SETTINGS
@given(interval=INTERVALS, anchor=TIMES, skip=st.integers(0, 100_000))
def test_interval_slots_walk_forward_without_repeats(
    interval: float, anchor: float, skip: int
) -> None:
    rule = interval_rule(interval, anchor)
    times = rule.upcoming(anchor + skip * interval, count=200)
    assert all(a < b for a, b in itertools.pairwise(times)), times
    assert times == [anchor + (skip + i) * interval for i in range(1, 201)]


@PROPERTY_SETTINGS
@given(
    interval=INTERVALS,
    anchor=TIMES,
    first=st.integers(0, 100_000),
    due=st.integers(0, 300),
    extra=st.floats(0, 0.999),
    policy=st.sampled_from(["skip", "run_once", "catch_up"]),
    grace=st.floats(0, 10_000),
    max_catch_up=st.integers(1, 1000),
)
def test_interval_plan_fires_each_due_slot_at_most_once(
    interval: float,
    anchor: float,
    first: int,
    due: int,
    extra: float,
    policy: str,
    grace: float,
    max_catch_up: int,
) -> None:
    rule = interval_rule(interval, anchor)
    next_fire_at = anchor + first * interval
    now = anchor + (first + due + extra) * interval
    expected = [s for k in range(first, first + due + 2) if (s := anchor + k * interval) <= now]
    fired = plan(
        rule,
        next_fire_at,
        now,
        policy=policy,  # type: ignore[arg-type]
        max_catch_up=max_catch_up,
        grace=grace,
        end_at=None,
    )
    assert len(set(fired.slots)) == len(fired.slots)
    assert all(a < b for a, b in itertools.pairwise(fired.slots))
    assert set(fired.slots) <= set(expected)
    assert len(fired.slots) + fired.missed == len(expected)
    on_time = [s for s in expected if now - s <= grace]
    assert set(on_time) <= set(fired.slots)
    if policy == "run_once" and len(expected) > len(on_time):
        assert len(fired.slots) == len(on_time) + 1
    assert fired.next_fire_at == rule.next_after(now) and fired.next_fire_at > now


# -- the task state machine ---------------------------------------------------------------
LEASE = 10.0
WORKER = "w1"
#: the transition each operation may make (chronoq.lifecycle); the others change nothing
MAKES: dict[str, tuple[Transition, ...]] = {
    "submit": (),  # makes new tasks only (lifecycle.SUBMIT or, on PostgreSQL, HAND_OFF)
    "advance": (),
    "promote": (lifecycle.PROMOTE,),
    "claim": (lifecycle.CLAIM,),
    "complete": (lifecycle.FINISH,),
    "cancel": (lifecycle.CANCEL,),
    "retry": (lifecycle.RETRY,),
    "reap": (lifecycle.REAP,),
    "release": (lifecycle.RELEASE,),
}


class TaskLifecycle(RuleBasedStateMachine):
    """Random submits, promotions, claims (offering free slots for hand-offs), completions
    (current and stale), releases, cancels, retries, lease expiries and clock jumps on a
    real store (``url``: PostgreSQL; None: a fresh SQLite file). Every status change seen
    must be one the operation's transition in :data:`chronoq.lifecycle.TABLE` makes, and
    a terminal status never changes except ``dead`` → ``queued`` by a retry."""

    url: str | None = None
    #: what the runs covered, over all examples: kind -> count
    covered: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="chronoq-props-")
        self.loop = asyncio.new_event_loop()
        url = self.url or f"sqlite:///{Path(self.folder) / 'props.db'}"
        self.store: Store = create_store(url)
        self.run(self.store.open())
        self.run(self.store.migrate())
        if self.url is not None:
            self.run(self._empty_and_listen())
        self.now = 1_900_000_000.0
        self.ids: list[str] = []
        self.seen: dict[str, Status] = {}
        self.attempts: dict[str, int] = {}
        #: every claim ever made: (task as claimed, its attempt), current or superseded
        self.claims: list[TaskRecord] = []
        self.last_op = "start"

    async def _empty_and_listen(self) -> None:
        """PostgreSQL: one schema serves every example, emptied here; the worker's channel
        is listened to, so a claim can offer its free slots for hand-offs."""
        async with self.store.conn() as c:
            await c.execute("TRUNCATE tasks, attempts, offers CASCADE")
        channel = worker_channel(WORKER)
        self.store.hub.on_message(channel, lambda _payload: None)
        for _ in range(500):
            if self.store._hearing(channel) is not None:  # type: ignore[attr-defined]
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"LISTEN {channel} never took effect")

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def status(self, task_id: str) -> Status:
        record: TaskRecord = self.run(self.store.get_task(task_id))
        return record.status

    # -- operations --------------------------------------------------------------------------
    @initialize(count=st.integers(1, 4), max_attempts=st.sampled_from([1, 1, 2, 3]))
    def some_tasks(self, count: int, max_attempts: int) -> None:
        for _ in range(count):
            self.submit(0.0, max_attempts)

    @rule(delay=st.sampled_from([0.0, 0.0, 5.0, 60.0]), max_attempts=st.sampled_from([1, 1, 2, 3]))
    def submit(self, delay: float, max_attempts: int) -> None:
        """A new task; due now on PostgreSQL it goes straight to the worker when a claim
        left a slot on offer (a hand-off: running, attempt 1)."""
        self.last_op = "submit"
        spec = TaskCreate(
            name="prop",
            delay_seconds=delay,
            max_attempts=max_attempts,
            backoff={"base": 2, "factor": 2, "max": 30, "jitter": 0},
        )
        record, created = self.run(self.store.create_task(spec, self.now))
        assert created
        if record.status is Status.RUNNING:
            event("hand-off")
            self.covered["hand-off"] = self.covered.get("hand-off", 0) + 1
            assert self.url is not None and delay == 0
            assert (record.attempts, record.worker_id) == (1, WORKER)
            assert record.status in lifecycle.HAND_OFF.targets
            self.claims.append(record)
        else:
            assert record.status is (Status.QUEUED if delay == 0 else Status.SCHEDULED)
            assert record.status in lifecycle.SUBMIT.targets
        self.ids.append(record.id)
        self.seen[record.id] = record.status
        self.attempts[record.id] = record.attempts

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0, 70.0]))
    def advance_clock(self, seconds: float) -> None:
        self.last_op = "advance"
        self.now += seconds

    @rule()
    def promote(self) -> None:
        self.last_op = "promote"
        self.run(self.store.promote_due(self.now))

    @rule(limit=st.integers(1, 3), offer=st.booleans())
    def claim(self, limit: int, offer: bool) -> None:
        """``offer``: the slots the claim leaves free are offered for hand-offs
        (PostgreSQL; elsewhere it changes nothing)."""
        self.last_op = "claim"
        claimed = self.run(
            self.store.claim(
                WORKER, "default", limit, self.now, LEASE, offer=["default"] if offer else ()
            )
        )
        for task in claimed:
            assert task.status is Status.RUNNING
            self.claims.append(task)

    @rule(pick=st.integers(0, 10_000), succeed=st.booleans(), latest=st.booleans())
    def complete(self, pick: int, succeed: bool, latest: bool) -> None:
        """Report the end of a claimed attempt: often the latest claim, otherwise any one,
        maybe cancelled or lost since (such a report must change nothing)."""
        self.last_op = "complete"
        if not self.claims:
            return
        if latest:
            pick = -1
        task = self.claims[pick % len(self.claims)] if pick >= 0 else self.claims[-1]
        current = self.run(self.store.get_task(task.id))
        completion = (
            Completion.success(task, self.now, {"ok": True})
            if succeed
            else Completion.failure(task, self.now, "failed", "boom")
        )
        self.run(self.store.complete([completion]))
        after = self.run(self.store.get_task(task.id))
        stale = current.status is not Status.RUNNING or current.attempts != task.attempts
        if stale:
            assert after.status is current.status, "a stale report changed the task"
        else:
            assert after.status is completion.status

    @rule(pick=st.integers(0, 10_000))
    def release(self, pick: int) -> None:
        """A stopping worker gives back a task it was handed (claimed or by hand-off) but
        did not start: queued again, that attempt undone; it never reports on it."""
        self.last_op = "release"
        if not self.claims:
            return
        task = self.claims.pop(pick % len(self.claims))
        current = self.run(self.store.get_task(task.id))
        self.run(self.store.release(WORKER, [task]))
        after = self.run(self.store.get_task(task.id))
        if current.status is Status.RUNNING and current.attempts == task.attempts:
            self.covered["release"] = self.covered.get("release", 0) + 1
            assert (after.status, after.attempts) == (Status.QUEUED, task.attempts - 1)
            history = self.run(self.store.get_attempts(task.id))
            assert [a.attempt for a in history] == list(range(1, task.attempts))
        else:
            assert (after.status, after.attempts) == (current.status, current.attempts)

    @rule(pick=st.integers(0, 10_000))
    def cancel(self, pick: int) -> None:
        self.last_op = "cancel"
        task_id = self.ids[pick % len(self.ids)]
        before = self.status(task_id)
        try:
            self.run(self.store.cancel_task(task_id, self.now))
        except InvalidTransition:
            assert before not in lifecycle.CANCEL.sources
            assert self.status(task_id) is before
        else:
            assert before in lifecycle.CANCEL.sources
            assert self.status(task_id) is Status.CANCELLED

    @rule(pick=st.integers(0, 10_000))
    def retry(self, pick: int) -> None:
        self.last_op = "retry"
        task_id = self.ids[pick % len(self.ids)]
        before = self.status(task_id)
        try:
            self.run(self.store.retry_task(task_id, self.now))
        except InvalidTransition:
            assert before not in RETRYABLE
            assert self.status(task_id) is before
        else:
            assert before in RETRYABLE
            assert self.status(task_id) is Status.QUEUED

    @rule()
    def reap_expired_leases(self) -> None:
        """What the scheduler does for a worker that stopped heartbeating."""
        self.last_op = "reap"
        expired = self.run(self.store.expired_leases(self.now))
        assert all(t.status is Status.RUNNING for t in expired)
        self.run(
            self.store.complete(
                [Completion.failure(t, self.now, "lost", "lease expired") for t in expired],
                lapsed=self.now,
            )
        )

    # -- what must hold after every step -------------------------------------------------
    @invariant()
    def every_change_is_a_transition_of_the_operation(self) -> None:
        for task_id in self.ids:
            record: TaskRecord = self.run(self.store.get_task(task_id))
            before, after = self.seen[task_id], record.status
            if after is not before:
                event(f"{before} -> {after}")
                assert any(
                    before in t.sources and after in t.targets for t in MAKES[self.last_op]
                ), f"{self.last_op}: {task_id} went {before} -> {after}"
                assert before in TRANSITIONS[after]
                if before in TERMINAL:
                    assert (before, after, self.last_op) == (Status.DEAD, Status.QUEUED, "retry"), (
                        f"{self.last_op}: terminal {before} became {after}"
                    )
            # attempts never go back, but for the one a release undoes
            undone = 1 if self.last_op == "release" else 0
            assert record.attempts >= self.attempts[task_id] - undone
            assert record.attempts <= record.max_attempts
            if after is Status.RUNNING:
                assert record.attempts >= 1
            self.seen[task_id] = after
            self.attempts[task_id] = record.attempts


LIFECYCLE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_task_lifecycle(dialect: str) -> None:
    """The state machine on each store; on PostgreSQL one schema serves every example."""
    if dialect == "sqlite":
        lite: type[TaskLifecycle] = type("TaskLifecycleSQLite", (TaskLifecycle,), {"covered": {}})
        run_state_machine_as_test(lite, settings=LIFECYCLE_SETTINGS)
        assert lite.covered.get("release", 0) > 0
        return
    schema = f"props_{uuid.uuid4().hex[:12]}"
    url = f"{PG_URL}?schema={schema}"

    async def migrate() -> None:
        store = create_store(url)
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    try:
        pg: type[TaskLifecycle] = type(
            "TaskLifecyclePostgres", (TaskLifecycle,), {"url": url, "covered": {}}
        )
        run_state_machine_as_test(pg, settings=LIFECYCLE_SETTINGS)
        # the runs exercised what the machine is for (hand-offs exist on PostgreSQL only)
        assert pg.covered.get("hand-off", 0) > 0 and pg.covered.get("release", 0) > 0
    finally:
        asyncio.run(drop_schema(schema))


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *"])
def test_dst_rules_still_hold_at_the_transitions(cron: str) -> None:
    """The cases the croniter comparison leaves out (see chronoq.recurrence): around the
    spring-forward gap and the repeated fall-back hour the fire times still increase."""
    paris = Recurrence(cron=cron, timezone="Europe/Paris")
    for day in ("2030-03-30T12:00:00+00:00", "2030-10-26T12:00:00+00:00"):
        start = datetime.fromisoformat(day).timestamp()
        times = paris.upcoming(start, count=30)
        assert all(a < b for a, b in itertools.pairwise(times))
