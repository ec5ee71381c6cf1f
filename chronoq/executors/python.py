"""Run a Python function: coroutines on the event loop, plain functions in a thread."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chronoq.executors.base import Executor


class PythonExecutor(Executor):
    """Calls ``fn(**payload)``. Sync functions run in a thread pool so the loop stays free;
    a timed-out sync function cannot be interrupted and finishes in its thread."""

    def __init__(self, fn: Callable[..., Any], threads: ThreadPoolExecutor | None = None) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.threads = threads

    async def run(self, payload: dict[str, Any]) -> Any:
        if self.is_async:
            return await self.fn(**payload)
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, self.fn, **payload)
        return await asyncio.get_running_loop().run_in_executor(self.threads, call)
