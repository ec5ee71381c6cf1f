"""The broker interface the worker uses."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from chronoq.store import TaskRecord


class Broker(abc.ABC):
    """Hands claimed tasks to a worker and hears when their outcome is recorded."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and prepare (queues, consumer groups)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        """Up to ``limit`` tasks now claimed for this worker in the store; waits up to
        ``timeout`` seconds (less if :meth:`interrupt` is called) when there are none."""

    async def quiesce(self) -> None:  # noqa: B027 - optional hook
        """The worker is stopping: take back any standing offer to receive new work."""

    async def strays(self, known: Sequence[str], lease_before: float) -> list[TaskRecord]:
        """Tasks handed to this worker whose hand-off it never heard of (not in ``known``,
        lease running out before ``lease_before``): the worker starts them. Only brokers
        that take hand-offs have any."""
        return []

    async def done(self, task_ids: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """The outcomes of these tasks' attempts are recorded: acknowledge them."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Make a waiting :meth:`fetch` return now (the worker is stopping)."""
