"""Sample handlers, tasks and a schedule for ``chronoq dev --demo``: success, retry, dead
letter, delay, and ``demo.tick`` firing every 20 seconds."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from chronoq.app import App
from chronoq.executors import TaskFailed, current_task
from chronoq.models import BackoffSpec, TaskCreate

log = logging.getLogger("chronoq.demo")


def register(app: App) -> None:
    """Add the demo handlers (``demo.*``) to ``app``."""

    @app.task("demo.add")
    def add(a: float, b: float) -> float:
        return a + b

    @app.task("demo.sleep")
    async def sleep(seconds: float = 1.0) -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.task("demo.flaky", max_attempts=4)
    def flaky(succeed_on_attempt: int = 3) -> str:
        attempt = current_task.get().attempt
        if attempt < succeed_on_attempt:
            raise TaskFailed(
                f"attempt {attempt} fails on purpose (succeeds on {succeed_on_attempt})"
            )
        return f"succeeded on attempt {attempt}"

    @app.task("demo.fail", max_attempts=2)
    def fail(reason: str = "always fails") -> None:
        raise RuntimeError(reason)

    @app.periodic(cron="*/20 * * * * *", name="demo.tick", misfire_policy="skip")
    def tick() -> str:
        return f"tick at slot attempt {current_task.get().attempt}"

    @app.task("demo.report")
    def report(items: int = 100) -> dict[str, float]:
        values = [random.random() for _ in range(items)]
        return {"items": items, "mean": sum(values) / items}


DEMO_TASKS = [
    TaskCreate(name="demo.add", payload={"a": 2, "b": 40}),
    TaskCreate(name="demo.report", payload={"items": 1000}, priority=10),
    TaskCreate(name="demo.sleep", payload={"seconds": 2}),
    TaskCreate(
        name="demo.flaky",
        payload={"succeed_on_attempt": 3},
        max_attempts=4,
        backoff=BackoffSpec(base=1, factor=2, max=10, jitter=0.1),
    ),
    TaskCreate(
        name="demo.fail",
        payload={"reason": "this one ends in the dead-letter queue"},
        max_attempts=2,
        backoff=BackoffSpec(base=1, jitter=0),
    ),
    TaskCreate(name="demo.add", payload={"a": 1, "b": 1}, delay_seconds=5),
]


async def submit(app: App) -> list[str]:
    """Submit the demo tasks; returns their ids."""
    ids = []
    for spec in DEMO_TASKS:
        task = await app.submit(spec)
        ids.append(task.id)
        when = "in 5s" if spec.delay_seconds else "now"
        log.info("demo: submitted %s %s (%s)", spec.name, task.id, when)
    return ids
