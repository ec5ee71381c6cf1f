"""The RQ jobs of ``benchmarks/compare.py``: the same handlers as ``chronoq_app.py``.

RQ enqueues a function by its import path, so these are plain module-level functions;
``compare.py`` starts ``rq worker`` processes from the repository root to run them.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import stamps


def noop() -> None:
    return None


def stamp(key: str, token: str) -> None:
    started = time.time()
    stamps().hset(key, token, repr(started))


def sleep(seconds: float = 0.05) -> None:
    time.sleep(seconds)


def whoami() -> int:
    """The pid of the process that ran the task (warm-up: has every worker run one?).
    Also opens this process's stamps connection, which the latency phase should not pay
    for."""
    stamps().ping()
    return os.getpid()
