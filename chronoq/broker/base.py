"""The broker interface the worker uses: the worker asks, the broker answers.

Control runs one way. The worker calls :meth:`Broker.fetch` for work and tells the broker
what it finished; a broker never calls into the worker. Tasks a broker comes to hold for
the worker between two fetches (PostgreSQL hand-offs) wait inside it until the next fetch
takes them, and the worker asks which those are when it renews leases or stops.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chronoq.store import TaskRecord
from chronoq.store.interfaces import ClaimStore


@dataclass(frozen=True)
class Consumer:
    """What a broker needs to know of the worker it serves."""

    store: ClaimStore
    worker_id: str
    queues: tuple[str, ...]
    lease_seconds: float


class Broker(abc.ABC):
    """Gives a worker tasks claimed for it and hears when their outcome is recorded."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and prepare (queues, consumer groups, hand-off notifications)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def fetch(self, limit: int, timeout: float) -> list[TaskRecord]:
        """Up to ``limit`` tasks now claimed for this worker in the store; waits up to
        ``timeout`` seconds (less if :meth:`interrupt` is called) when there are none."""

    async def quiesce(self) -> None:  # noqa: B027 - optional hook
        """The worker is stopping: take back any standing offer to receive new work; once
        this returns, nothing more is claimed for the worker behind its back."""

    def held_ids(self) -> list[str]:
        """Tasks already claimed for this worker that no fetch returned yet (hand-offs
        waiting for a free slot): the worker renews their leases with its own."""
        return []

    def forget(self, task_id: str) -> bool:
        """Drop a held task that is no longer the worker's to run (cancelled, lease lost);
        True if it was held."""
        return False

    def take_held(self, most: int | None = None) -> list[TaskRecord]:
        """Remove and return the held tasks (``most`` of them, oldest first): for the slots
        free when the worker stops, and then to give back."""
        return []

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


#: makes the broker of one worker; the default is :meth:`StoreBroker.for_consumer`
BrokerFactory = Callable[[Consumer], Broker]
