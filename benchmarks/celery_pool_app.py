"""The Celery app of ``benchmarks/pool.py``: prefork without a result backend.

Its fastest honest setup: no results (nothing is written per task but one pipelined
``INCR`` + ``SET`` of a completion counter and the time of the last completion, in
``BENCH_STAMPS_URL``, which is how the benchmark knows the work is done), early acks,
``--prefetch-multiplier`` set high by the benchmark. Broker ``BENCH_CELERY_BROKER``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import task_postrun

from benchmarks.common import burn, stamps

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/13")
#: the completion counter and the time of the latest completion
DONE, LAST = "bench:pool:done", "bench:pool:last"

app = Celery("bench_pool", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@task_postrun.connect
def _count(**_: Any) -> None:
    stamps().pipeline(transaction=False).incr(DONE).set(LAST, repr(time.time())).execute()


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.cpu")
def cpu(n: int) -> None:
    burn(n)


@app.task(name="bench.stamp")
def stamp(key: str, token: str) -> None:
    stamps().hset(key, token, repr(time.time()))


@app.task(name="bench.whoami")
def whoami() -> None:
    """Record the pid of the child that ran it (warm-up: has every child run one?)."""
    stamps().sadd("bench:pool:pids", os.getpid())
