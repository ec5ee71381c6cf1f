"""The narrow views of the store its consumers need, so each depends on what it uses rather
than on all of :class:`~chronoq.store.base.Store`.

:class:`SchedulerStore` is what :class:`chronoq.scheduler.Scheduler` calls;
:class:`WorkerStore` (a worker's own writes, its journals and its blocked-loop watchdog's
lease renewals) is what ``chronoq/worker/`` and ``chronoq/watchdog.py`` take, and
:class:`ClaimStore` (how a broker gets a worker its tasks) is what ``chronoq/broker/`` takes.
:class:`WorkerSide` is both, for the :class:`~chronoq.worker.Worker` that wires them. Both
stores satisfy all of them (checked by mypy, :func:`_conforms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from chronoq.events import EventBus, LogEvent, ProgressEvent
from chronoq.notify import Hub
from chronoq.store.leases import Fence, LeaseInfo
from chronoq.store.records import Completion, Row, TaskRecord
from chronoq.store.tasklogs import Chunk, Step
from chronoq.store.workers import Served


class _Announcing(Protocol):
    @property
    def hub(self) -> Hub:
        """In-process wake-ups (waiting on them, and what the store's writes wake)."""


class _Completing(_Announcing, Protocol):
    """Recording attempts' outcomes (a worker's, or the reaper's for lost leases)."""

    async def deaths(self, task_ids: Sequence[str]) -> dict[str, int]: ...
    async def complete(
        self,
        completions: Sequence[Completion],
        fence: Fence | None = None,
        *,
        lapsed: float | None = None,
    ) -> None: ...


class SchedulerLeases(Protocol):
    """The leases a scheduler takes: leadership and schedule partitions."""

    async def try_take(self, name: str, holder: str, now: float, ttl: float) -> Fence | None: ...
    async def release(self, fence: Fence) -> None: ...
    async def try_take_many(
        self, names: Sequence[str], holder: str, now: float, ttl: float
    ) -> list[Fence]: ...
    async def release_many(self, fences: Sequence[Fence]) -> None: ...
    async def like(self, prefix: str) -> list[LeaseInfo]: ...
    async def forget(self, names: Sequence[str], before: float) -> None: ...


class Firing(Protocol):
    """Firing due schedules, exactly once per slot."""

    async def fire_due(
        self,
        now: float,
        limit: int = 500,
        fence: Fence | None = None,
        owned: Sequence[Fence] | None = None,
        ahead: float = 0.0,
    ) -> int: ...


class Reaping(Protocol):
    """Marking silent workers dead."""

    async def mark_dead(self, silent_since: float) -> list[str]: ...


class SchedulerStore(_Completing, Protocol):
    """What the scheduler does: leadership, partition leases, firing schedules, promoting
    due tasks, reaping expired leases."""

    @property
    def leases(self) -> SchedulerLeases: ...
    @property
    def schedules(self) -> Firing: ...
    @property
    def workers(self) -> Reaping: ...
    async def promote_due(
        self, now: float, limit: int = 1000, fence: Fence | None = None
    ) -> list[str]: ...
    async def next_due_at(
        self, partitions: Sequence[int] | None = None, tasks: bool = True, ahead: float = 0.0
    ) -> float | None: ...
    async def expired_leases(self, now: float, limit: int = 500) -> list[TaskRecord]: ...
    def advance_counts_soon(self, now: float) -> None: ...
    async def time_out_workflows(self, now: float) -> int: ...


class Registering(Protocol):
    """A worker's own row in the registry, and what the other live workers serve."""

    async def register(
        self,
        worker_id: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        concurrency: int,
        now: float,
        handlers: Sequence[str] | None = None,
    ) -> None: ...
    async def heartbeat(
        self,
        worker_id: str,
        running: int,
        processed: int,
        concurrency: int,
        now: float,
        status: str = "alive",
        detail: dict[str, Any] | None = None,
    ) -> str | None: ...
    async def child_restarts(self, worker_id: str, restarts: int) -> None: ...
    async def served(self, seen_since: float, excluding: str | None = None) -> Served: ...


class WorkerStore(_Completing, Protocol):
    """A worker's own writes: its registry row, its leases, its attempts' outcomes."""

    @property
    def outage_errors(self) -> tuple[type[Exception], ...]: ...
    @property
    def events(self) -> EventBus:
        """Where the worker announces its own events (child restarts)."""

    def sibling(self) -> WorkerStore | None:
        """An unopened store of its own for the watchdog's thread (``open``/``close``)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    @property
    def workers(self) -> Registering: ...
    async def heartbeat(
        self, worker_id: str, task_ids: Sequence[str], lease_until: float
    ) -> set[str]: ...
    async def release(self, worker_id: str, tasks: Sequence[TaskRecord]) -> None: ...
    async def write_journals(
        self,
        chunks: Sequence[Chunk],
        steps: Sequence[Step],
        events: Sequence[ProgressEvent] = (),
        logs: Sequence[LogEvent] = (),
    ) -> None: ...


class LimitedClaim(Protocol):
    """The claim of keyed tasks (:mod:`chronoq.store.limits`)."""

    @property
    def limited_now(self) -> frozenset[str]: ...
    async def queues(self, fresh: bool = False) -> frozenset[str]: ...
    async def claim(
        self, worker_id: str, queue: str, limit: int, now: float, lease: float
    ) -> list[TaskRecord]: ...


class ClaimStore(_Announcing, Protocol):
    """How a broker hands a worker its tasks: claims (by queue or by id), hand-offs and
    their offers, strays, and the reconciler's re-publishing."""

    async def claim(
        self,
        worker_id: str,
        queue: str,
        limit: int,
        now: float,
        lease: float,
        *,
        offer: Sequence[str] = (),
    ) -> list[TaskRecord]: ...
    async def claim_ids(
        self, worker_id: str, ids: Sequence[str], now: float, lease: float
    ) -> list[TaskRecord]: ...
    def claimed(self, rows: Sequence[Row], now: float) -> list[TaskRecord]: ...
    def started(self, tasks: list[TaskRecord], now: float) -> list[TaskRecord]: ...
    async def get_task(self, task_id: str, namespace: str | None = None) -> TaskRecord: ...
    async def strays(
        self, worker_id: str, known: Sequence[str], lease_before: float
    ) -> list[TaskRecord]: ...
    async def withdraw_offers(self, worker_id: str) -> None: ...
    async def stale_queued(
        self, before: float, now: float, limit: int = 1000, queue: str | None = None
    ) -> list[tuple[str, str, int]]: ...
    @property
    def limits(self) -> LimitedClaim: ...


class WorkerSide(WorkerStore, ClaimStore, Protocol):
    """What a :class:`~chronoq.worker.Worker` is given: its own writes and its broker's
    claims."""


def _conforms() -> list[Callable[..., object]]:
    """For mypy only: both stores are each of these views."""
    from chronoq.store.postgres import PostgresStore
    from chronoq.store.sqlite import SQLiteStore

    def views(store: SQLiteStore | PostgresStore) -> tuple[SchedulerStore, WorkerSide]:
        return store, store

    return [views]
