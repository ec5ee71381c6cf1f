"""Run a Python function: coroutines on the event loop, plain functions in a thread."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chronoq.executors.base import Executor, TaskFailed


class PythonExecutor(Executor):
    """Calls ``fn(**payload)``. Sync functions run in a thread pool so the loop stays free;
    a timed-out sync function cannot be interrupted and finishes in its thread."""

    def __init__(self, fn: Callable[..., Any], threads: ThreadPoolExecutor | None = None) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.threads = threads
        self.signature = signature_of(fn)

    async def run(self, payload: dict[str, Any]) -> Any:
        check_payload(self.fn, self.signature, payload)
        if self.is_async:
            return await self.fn(**payload)
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, self.fn, **payload)
        return await asyncio.get_running_loop().run_in_executor(self.threads, call)


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature, or None when Python cannot tell it (some built-ins)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def check_payload(fn: Callable[..., Any], signature: inspect.Signature | None,
                  payload: dict[str, Any]) -> None:
    """Refuse, for good, a payload the handler cannot take as keyword arguments (a missing
    or an unexpected one). Checked before the call, so a TypeError raised inside the handler
    is never mistaken for it."""
    if signature is None:
        return
    try:
        signature.bind(**payload)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        shown = signature.replace(return_annotation=inspect.Signature.empty)
        raise TaskFailed(f"payload does not fit the handler {name}{shown}: {exc}",
                         retry=False) from None
