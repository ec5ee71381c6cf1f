"""Firing ahead (CHRONOQ_SCHEDULE_FIRE_AHEAD): a slot's task is inserted ``ahead`` seconds
early as ``scheduled`` and promoted at its slot; misfire lateness is still judged
against now."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from chronoq.models import ScheduleCreate, TaskTemplate
from chronoq.recurrence import Recurrence, plan
from chronoq.states import Status
from chronoq.store import create_store, opened


def test_plan_fires_the_slots_within_ahead_and_judges_lateness_by_now() -> None:
    every = Recurrence(interval=10.0, anchor=0.0)
    fired = plan(every, 80.0, 100.0, policy="skip", max_catch_up=1, grace=15.0, end_at=None)
    assert fired.slots == [90.0, 100.0] and fired.next_fire_at == 110.0
    ahead = plan(
        every, 80.0, 100.0, policy="skip", max_catch_up=1, grace=15.0, end_at=None, ahead=25.0
    )
    assert ahead.slots == [90.0, 100.0, 110.0, 120.0] and ahead.next_fire_at == 130.0
    assert ahead.missed == 1  # 80 is 20 s late whatever is fired ahead


async def test_a_slot_fired_ahead_waits_scheduled_until_due(db_url: str) -> None:
    async with opened(create_store(db_url)) as store:
        now = time.time()
        slot = float(int(now) + 3)
        spec = ScheduleCreate(
            name="soon",
            interval_seconds=3600,
            start_at=datetime.fromtimestamp(slot, UTC),
            task=TaskTemplate(name="job"),
        )
        await store.schedules.create(spec, now)
        assert await store.schedules.fire_due(now) == 0  # not due, nothing ahead
        assert await store.next_due_at(tasks=False) == slot
        assert await store.next_due_at(tasks=False, ahead=5.0) == slot - 5.0
        assert await store.schedules.fire_due(now, ahead=5.0) == 1
        assert await store.schedules.fire_due(now, ahead=5.0) == 0  # next slot is an hour on
        (task,) = await store.list_tasks()
        assert task.status is Status.SCHEDULED and task.run_at == slot == task.slot
        assert await store.promote_due(slot - 0.5) == []
        promoted = await store.promote_due(slot)
        assert promoted == ["default"]  # the queues it woke
        assert (await store.get_task(task.id)).status is Status.QUEUED
