"""The chronoq App of ``benchmarks/compare.py``: the same four handlers as
``benchmarks/celery_app.py`` and ``benchmarks/rq_tasks.py``.

Run by ``compare.py`` as ``chronoq worker --app benchmarks.chronoq_app:app`` from the
repository root; the submitting client imports it too and calls ``noop.adelay()``.
"""

from __future__ import annotations

import asyncio
import os
import time

from benchmarks.common import burn, stamps
from chronoq import App

app = App()


@app.task("bench.noop", max_attempts=1)
async def noop() -> None:
    """Do nothing: the benchmark measures the scheduler's overhead, not the handler's."""
    return None


@app.task("bench.stamp", max_attempts=1)
async def stamp(key: str, token: str) -> None:
    """Record ``time.time()`` at the start of the handler under ``token`` in hash ``key``."""
    started = time.time()
    stamps().hset(key, token, repr(started))


@app.task("bench.sleep", max_attempts=1)
async def sleep(seconds: float = 0.05) -> None:
    """I/O-bound work: wait without using the CPU."""
    await asyncio.sleep(seconds)


@app.task("bench.whoami", max_attempts=1)
async def whoami() -> int:
    """The pid of the process that ran the task (warm-up: has every worker run one?).
    Also opens this process's stamps connection, which the latency phase should not pay
    for."""
    stamps().ping()
    return os.getpid()


@app.task("bench.cpu", max_attempts=1)
def cpu(n: int) -> None:
    """CPU-bound work (``benchmarks/pool.py``): a sync handler, so the async pool runs it in
    a thread and the process pool in a child."""
    burn(n)
