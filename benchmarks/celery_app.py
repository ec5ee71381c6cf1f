"""The Celery app of ``benchmarks/compare.py``: the same handlers as ``chronoq_app.py``.

Broker ``BENCH_CELERY_BROKER`` (default Redis DB 8), results in ``BENCH_CELERY_BACKEND``
(default Redis DB 10: chronoq and RQ record every outcome, so Celery does too, and the
benchmark reads completion times from ``date_done``). Started by ``compare.py`` as
``celery -A benchmarks.celery_app worker ...`` from the repository root.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from benchmarks.common import stamps

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/8")
BACKEND_URL = os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/10")

app = Celery("bench", broker=BROKER_URL, backend=BACKEND_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.stamp")
def stamp(key: str, token: str) -> None:
    started = time.time()
    stamps().hset(key, token, repr(started))


@app.task(name="bench.sleep")
def sleep(seconds: float = 0.05) -> None:
    time.sleep(seconds)


@app.task(name="bench.whoami")
def whoami() -> int:
    """The pid of the process that ran the task (warm-up: has every worker run one?).
    Also opens this process's stamps connection, which the latency phase should not pay
    for."""
    stamps().ping()
    return os.getpid()
