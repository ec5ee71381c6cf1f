"""Group commit: concurrent calls share one write.

A call made while no write is in flight goes out at once, alone, from the caller's own
task (no added latency on an idle system); calls made while a write is in flight wait for
it and then go out together in the next one. Under load every round trip carries many
items; nothing waits on a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Feeds items to ``write`` in batches of up to ``max_batch``; one write at a time.

    ``write`` returns one result per item, in order. If it raises, every caller of that
    batch gets the exception (and later batches still run), unless ``split(exc)`` says
    the error may come from one bad item: then the items are written one by one, so only
    the bad one fails.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        max_batch: int = 500,
        split: Callable[[Exception], bool] = lambda _exc: False,
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self._split = split
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False  # a write is in flight (a caller's own, or the writer task's)
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` (with whatever else is pending) and return its result."""
        if not self._busy:  # idle: write it now, without a hop through another task
            self._busy = True
            try:
                [result] = await self._write([item])
            finally:
                self._busy = False
                self._start_writer()
            return result
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        return await future

    def _start_writer(self) -> None:
        """Write what queued up during a caller's own write, in a task of its own."""
        if self._pending and not self._busy:
            self._busy = True
            self._writer = asyncio.create_task(self._drain(), name="chronoq-group-commit")

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    await self._write_batch(batch)
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
        finally:
            self._busy = False
            self._writer = None
            for _, future in self._pending:  # only left when the writer was cancelled
                future.cancel()
            self._pending.clear()

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and self._split(exc):
                for one in batch:
                    await self._write_batch([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # the caller may have given up (cancelled)
                future.set_result(result)
