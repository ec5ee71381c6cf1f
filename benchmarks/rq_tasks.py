"""The RQ jobs of ``benchmarks/compare.py``: the same handlers as ``chronoq_app.py``.

RQ enqueues a function by its import path, so these are plain module-level functions;
``compare.py`` starts ``rq worker`` processes from the repository root to run them.
"""

from __future__ import annotations

import os
import time

import redis

STAMPS_URL = os.environ.get("BENCH_STAMPS_URL", "redis://127.0.0.1:6379/11")

_stamps: redis.Redis | None = None


def stamps() -> redis.Redis:
    """This process's client for the stamps database (made on first use)."""
    global _stamps
    if _stamps is None:
        _stamps = redis.Redis.from_url(STAMPS_URL)
    return _stamps


def noop() -> None:
    return None


def stamp(key: str, token: str) -> None:
    started = time.time()
    stamps().hset(key, token, repr(started))


def sleep(seconds: float = 0.05) -> None:
    time.sleep(seconds)


def whoami() -> int:
    return os.getpid()
