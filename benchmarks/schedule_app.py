"""The App the schedule benchmark runs: one no-op handler, ``bench.tick``.

``benchmarks/schedules.py`` creates its schedules with this task name and either runs the
handler in an in-process :class:`chronoq.worker.Worker` or starts worker processes with
``chronoq worker --app benchmarks.schedule_app:app`` from the repository root.
"""

from __future__ import annotations

from chronoq import App

TASK = "bench.tick"

app = App()


@app.task(TASK, max_attempts=1)
async def tick() -> None:
    """Do nothing: the benchmark measures when a slot's task starts, not what it does."""
    return None
