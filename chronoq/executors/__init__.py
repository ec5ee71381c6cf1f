"""Executors: what actually runs a task. Python functions, HTTP calls, allow-listed programs."""

from __future__ import annotations

from chronoq.executors.base import Executor, TaskContext, TaskFailed, current_task
from chronoq.executors.http import HttpExecutor
from chronoq.executors.python import PythonExecutor
from chronoq.executors.shell import ShellExecutor

__all__ = [
    "Executor",
    "HttpExecutor",
    "PythonExecutor",
    "ShellExecutor",
    "TaskContext",
    "TaskFailed",
    "current_task",
]
