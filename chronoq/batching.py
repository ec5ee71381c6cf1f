"""Group commit: concurrent calls share one write.

A call made while no write is in flight goes out at once, alone (no added latency on an
idle system); calls made while a write is in flight wait for it and then go out together
in the next one. Under load every round trip carries many items; nothing waits on a timer.
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
    batch gets the exception (and later batches still run).
    """

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
                 max_batch: int = 500) -> None:
        self._write = write
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` (with whatever else is pending) and return its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="chronoq-group-commit")
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # the caller may have given up (cancelled)
                        future.set_result(result)
        finally:
            self._writer = None
            for _, future in self._pending:  # only left when the writer was cancelled
                future.cancel()
            self._pending.clear()
