"""Celery at its fastest honest setup for ``benchmarks/compare.py`` (the main Celery row):
no result backend (``task_ignore_result``), prefork, prefetch multiplier 64.

Without a result backend the benchmark still needs to see when each task finished, so
every handler records its own end in one Redis hash (``HSET bench:done <task id>
"<time> <pid>"``, database ``BENCH_CELERY_DONE``): one Redis write per task, the cost of
being observable (chronoq records every outcome in its database anyway). Same handler
names as ``celery_app.py``; started as ``celery -A benchmarks.celery_fast_app worker``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, Task

from benchmarks.common import stamps

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/8")
DONE_URL = os.environ.get("BENCH_CELERY_DONE", "redis://127.0.0.1:6379/10")
DONE_KEY = "bench:done"

app = Celery("bench_fast", broker=BROKER_URL, backend=None)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=64,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_done: redis.Redis | None = None


def _record(task: Task[Any, Any]) -> None:
    """Write this task's end (time and pid) where the benchmark reads it."""
    global _done
    if _done is None:
        _done = redis.Redis.from_url(DONE_URL)
    _done.hset(DONE_KEY, str(task.request.id), f"{time.time()!r} {os.getpid()}")


@app.task(name="bench.noop", bind=True)
def noop(self: Task[Any, Any]) -> None:
    _record(self)


@app.task(name="bench.stamp", bind=True)
def stamp(self: Task[Any, Any], key: str, token: str) -> None:
    started = time.time()
    stamps().hset(key, token, repr(started))
    _record(self)


@app.task(name="bench.sleep", bind=True)
def sleep(self: Task[Any, Any], seconds: float = 0.05) -> None:
    time.sleep(seconds)
    _record(self)


@app.task(name="bench.whoami", bind=True)
def whoami(self: Task[Any, Any]) -> None:
    """Warm-up: the pid lands in the done hash. Also opens the stamps connection."""
    stamps().ping()
    _record(self)
