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
        self.fits = PayloadCheck(fn)

    async def run(self, payload: dict[str, Any]) -> Any:
        self.fits.check(payload)
        if self.is_async:
            return await self.fn(**payload)
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, self.fn, **payload)
        return await asyncio.get_running_loop().run_in_executor(self.threads, call)


class PayloadCheck:
    """Refuses, for good, a payload a handler cannot take as keyword arguments (a missing
    or an unexpected one). Checked before the call, so a TypeError raised inside the
    handler is never mistaken for it. The usual signature (named parameters, maybe
    ``**kwargs``) is checked with two set operations; others with ``Signature.bind``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.name = getattr(fn, "__qualname__", repr(fn))
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some built-ins: Python cannot tell
            self.signature = None
            return
        params = self.signature.parameters.values()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.simple = all(p.kind in named or p.kind is p.VAR_KEYWORD for p in params)
        self.names = frozenset(p.name for p in params if p.kind in named)
        self.required = frozenset(
            p.name for p in params if p.kind in named and p.default is p.empty
        )
        self.any_name = any(p.kind is p.VAR_KEYWORD for p in params)

    def check(self, payload: dict[str, Any]) -> None:
        if self.signature is None:
            return
        if (
            self.simple
            and self.required.issubset(payload)
            and (self.any_name or self.names.issuperset(payload))
        ):
            return
        try:
            self.signature.bind(**payload)
        except TypeError as exc:
            shown = self.signature.replace(return_annotation=inspect.Signature.empty)
            raise TaskFailed(
                f"payload does not fit the handler {self.name}{shown}: {exc}", retry=False
            ) from None
