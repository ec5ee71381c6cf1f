"""Announcements (wake-ups and events) of task changes come from store/announce.py only,
after the change committed: a write that fails announces nothing."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from chronoq.models import TaskCreate
from chronoq.states import InvalidTransition
from chronoq.store import announce, create_store, opened

STORE = Path(announce.__file__).parent
#: Hub methods that wake other components, and the event bus's publishers
ANNOUNCING = {"ready", "scheduled", "cancelled", "publish", "publish_workflows"}


def announcing_calls(path: Path) -> list[str]:
    """``x.hub.ready(...)``, ``self.events.publish(...)`` and the like in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ANNOUNCING
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr in ("hub", "events")
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    return found


def test_only_the_announcer_wakes_and_publishes() -> None:
    found = [
        c
        for p in sorted(STORE.glob("*.py"))
        if p.name != "announce.py"
        for c in announcing_calls(p)
    ]
    assert not found, "store modules must announce through store/announce.py:\n" + "\n".join(found)
    assert announcing_calls(Path(announce.__file__))  # the checker sees the real ones


async def test_a_failed_write_announces_nothing_and_a_committed_one_once(db_url: str) -> None:
    async with opened(create_store(db_url)) as store:
        events = store.events.subscribe(maxsize=100)
        ready = store.hub.ready_event(["default"])
        try:
            record, _ = await store.create_task(TaskCreate(name="a"), time.time())
            assert ready.is_set()
            [[created]] = [events.queue.get_nowait()]
            assert (created.task_id, created.status) == (record.id, "queued")
            with pytest.raises(InvalidTransition):
                await store.retry_task(record.id, time.time())  # queued: not retryable
            assert events.queue.empty()
            await store.cancel_task(record.id, time.time())
            [[cancelled]] = [events.queue.get_nowait()]
            assert (cancelled.task_id, cancelled.status) == (record.id, "cancelled")
            assert events.queue.empty()
        finally:
            events.close()
            store.hub.discard(ready)
