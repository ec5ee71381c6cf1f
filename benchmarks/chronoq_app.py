"""The chronoq App of ``benchmarks/compare.py``: the same four handlers as
``benchmarks/celery_app.py`` and ``benchmarks/rq_tasks.py``.

Run by ``compare.py`` as ``chronoq worker --app benchmarks.chronoq_app:app`` from the
repository root; the submitting client imports it too and calls ``noop.adelay()``.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis

from chronoq import App

#: where ``bench.stamp`` records when a handler started (shared with Celery and RQ)
STAMPS_URL = os.environ.get("BENCH_STAMPS_URL", "redis://127.0.0.1:6379/11")

app = App()
_stamps: redis.Redis | None = None


def stamps() -> redis.Redis:
    """This process's client for the stamps database (made on first use)."""
    global _stamps
    if _stamps is None:
        _stamps = redis.Redis.from_url(STAMPS_URL)
    return _stamps


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
    """The pid of the process that ran the task (warm-up: has every worker run one?)."""
    return os.getpid()
