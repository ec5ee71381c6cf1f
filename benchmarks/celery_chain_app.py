"""The Celery app of ``benchmarks/workflows.py``'s chain comparison.

Redis broker ``BENCH_CELERY_CHAIN_BROKER`` (default DB 14) and no result backend: a Celery
chain passes each result to the next step inside the message, so it needs a backend only
to read results back (and for chords), which this benchmark does not do — its fastest
honest setup. Each step returns its count and the time its handler returned; the next
step pushes (its start - that end) to the list ``chain:gaps`` and the last pushes its
count to ``chain:done``, in the broker's database. Started by ``workflows.py`` as
``celery -A benchmarks.celery_chain_app worker -P solo`` from the repository root.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

BROKER_URL = os.environ.get("BENCH_CELERY_CHAIN_BROKER", "redis://127.0.0.1:6379/14")

app = Celery("bench-chain", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_redis: redis.Redis | None = None


def _stamps() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return _redis


@app.task(name="bench.chain_step")
def chain_step(previous: Any = None, last: int = 0) -> list[float]:
    """Step k+1 of a chain: ``previous`` is step k's ``[k, ended_at]``."""
    started = time.time()
    count = 0
    if previous is not None:
        count = int(previous[0])
        _stamps().rpush("chain:gaps", repr(started - previous[1]))
    count += 1
    if last and count == last:
        _stamps().rpush("chain:done", str(count))
    return [count, time.time()]
