"""Recurrence rules without a database: cron parsing, time zones, DST, misfire policies."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import pytest

from chronoq.recurrence import MisfirePolicy, Recurrence, check_cron, check_timezone, plan

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def local(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()


def at(tz: tzinfo, *args: int) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc, arg-type]


@pytest.mark.parametrize(
    "expr",
    [
        "*/5 * * * *",
        "0 9 * * MON-FRI",
        "0 0 1 JAN *",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "@midnight",
        "*/10 * * * * *",
        "0 30 9 * * SUN",
    ],
)
def test_valid_expressions(expr: str) -> None:
    check_cron(expr)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "has 3 fields"),
        ("every minute", "has 2 fields"),
        ("* * * * FUNDAY", "invalid cron expression"),
        ("@fortnightly", "has 1 fields"),
    ],
)
def test_invalid_expressions_say_why(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_cron(expr)


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4 *", "0 0 1 1 1#5", "0 0 0 31 11 *"])
def test_a_rule_that_never_fires_is_invalid(expr: str) -> None:
    with pytest.raises(ValueError, match="never fires"):
        check_cron(expr)
    with pytest.raises(ValueError, match="never fires"):
        Recurrence(cron=expr)


@pytest.mark.parametrize("expr", ["0 0 29 2 *", "0 0 29 2 1#5", "0 0 31 * *"])
def test_rare_rules_are_valid(expr: str) -> None:
    """Feb 29 on a Monday comes every 28 years, and once 40 years apart across 2100."""
    check_cron(expr)
    assert Recurrence(cron=expr).next_after(at(PARIS, 2026, 1, 1)) > 0


def test_a_leap_day_monday_is_found_across_a_skipped_leap_year() -> None:
    rule = Recurrence(cron="0 0 29 2 1#5", timezone="UTC")
    assert local(rule.next_after(at(UTC, 2072, 3, 1)), UTC) == "2112-02-29T00:00:00+00:00"


def test_unknown_timezone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        check_timezone("Mars/Olympus")


def test_cron_in_a_timezone_and_weekdays() -> None:
    rule = Recurrence(cron="0 9 * * MON-FRI", timezone="America/New_York")
    friday_noon = at(NEW_YORK, 2026, 11, 27, 12, 0)
    assert [local(t, NEW_YORK) for t in rule.upcoming(friday_noon, 2)] == [
        "2026-11-30T09:00:00-05:00",
        "2026-12-01T09:00:00-05:00",
    ]


def test_seconds_field_comes_first() -> None:
    rule = Recurrence(cron="*/20 * * * * *")
    assert rule.upcoming(60.0, 3) == [80.0, 100.0, 120.0]


def test_spring_forward_missing_slot_fires_once_at_shifted_time() -> None:
    rule = Recurrence(cron="30 2 * * *", timezone="Europe/Paris")
    fires = [local(t, PARIS) for t in rule.upcoming(at(PARIS, 2026, 3, 28, 12, 0), 3)]
    assert fires == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_fall_back_repeated_hour_fires_once_for_fixed_hours() -> None:
    rule = Recurrence(cron="30 2 * * *", timezone="Europe/Paris")
    fires = [local(t, PARIS) for t in rule.upcoming(at(PARIS, 2026, 10, 24, 12, 0), 3)]
    assert fires == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_fall_back_hourly_rules_follow_real_time() -> None:
    rule = Recurrence(cron="0 * * * *", timezone="Europe/Paris")
    fires = [local(t, PARIS) for t in rule.upcoming(at(PARIS, 2026, 10, 25, 1, 30), 3)]
    assert fires == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    gaps = {b - a for a, b in itertools.pairwise(rule.upcoming(0, 50))}
    assert gaps == {3600.0}


def test_interval_is_anchored() -> None:
    rule = Recurrence(interval=10, anchor=100.5)
    assert rule.upcoming(0, 2) == [100.5, 110.5]
    assert rule.next_after(110.5) == 120.5
    assert rule.next_after(115) == 120.5


def test_exactly_one_of_cron_or_interval() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Recurrence(cron="* * * * *", interval=5)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", [950, 960, 970, 980, 990, 1000]),
        ("run_once", [940, 950, 960, 970, 980, 990, 1000]),
        ("catch_up", [920, 930, 940, 950, 960, 970, 980, 990, 1000]),
    ],
)
def test_misfire_policies(policy: MisfirePolicy, expected: list[float]) -> None:
    rule = Recurrence(interval=10, anchor=0)
    fire = plan(
        rule,
        100,
        1000,
        policy=policy,
        max_catch_up=3,
        grace=55,
        end_at=None,
    )
    assert fire.slots == expected
    assert fire.next_fire_at == 1010


def test_end_at_stops_the_schedule() -> None:
    rule = Recurrence(interval=10, anchor=0)
    fire = plan(rule, 10, 35, policy="catch_up", max_catch_up=10, grace=100, end_at=30)
    assert fire.slots == [10, 20, 30]
    assert fire.next_fire_at is None


def test_jitter_delays_run_but_not_slot() -> None:
    rule = Recurrence(interval=10, anchor=0)
    fire = plan(rule, 10, 10, policy="skip", max_catch_up=1, grace=5, end_at=None, jitter=3)
    assert fire.slots == [10]
    assert 10 <= fire.run_at[0] <= 13
