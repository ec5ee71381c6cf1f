"""The App the schedule benchmark runs: one no-op handler, ``bench.tick``.

``benchmarks/schedules.py`` creates its schedules with this task name and either runs the
handler in an in-process :class:`chronoq.worker.Worker` or starts worker processes with
``chronoq worker --app benchmarks.schedule_app:app`` from the repository root.
"""

from __future__ import annotations

import time

from chronoq import App

TASK = "bench.tick"

app = App()


@app.task(TASK, max_attempts=1)
async def tick() -> None:
    """Do nothing: the benchmark measures when a slot's task starts, not what it does."""
    return None


@app.task("bench.now", max_attempts=1)
async def now() -> float:
    """When the handler started (epoch seconds), kept as the task's result: the history
    benchmark's submit->start is ``result - created_at``, whether the task was claimed or
    handed off (a hand-off opens its attempt at the insert)."""
    return time.time()
