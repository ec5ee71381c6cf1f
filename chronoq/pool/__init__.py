"""Execution isolation: run handlers in child processes (``--pool process``)."""

from __future__ import annotations

from chronoq.pool.process import (
    ChildCrashed,
    ChildError,
    ChildRestart,
    PoolError,
    PoolExecutor,
    PoolFailure,
    ProcessPool,
    child_command,
)

__all__ = [
    "ChildCrashed",
    "ChildError",
    "ChildRestart",
    "PoolError",
    "PoolExecutor",
    "PoolFailure",
    "ProcessPool",
    "child_command",
]
