"""The scheduler: fires recurring schedules, makes waiting tasks due on time, and rescues
tasks from dead workers.

It sleeps until the earliest ``run_at`` among scheduled tasks and retries (never longer
than ``poll_seconds``), and is woken at once when a task is scheduled for earlier. Each
round it fires the due slots of schedules (one task per slot, enforced by a unique index),
promotes every due task to ``queued`` (which wakes the workers) and fails the
attempts whose lease expired, so they are retried elsewhere. Promotion is a conditional
UPDATE, so several schedulers side by side never run a task twice. While leading it also
starts the retention sweep beside its rounds (:mod:`chronoq.retention`).

Any number of schedulers may run. They share the firing: each holds about 1/N of the
schedule partitions, each a lease of its own (:mod:`chronoq.partitions`). One leads at a
time for the rest (promotion, reaping, reconcile, retention), holding the ``scheduler``
lease (renewed every second, ``lease_ttl`` long); the others check every second and take
over when it expires. Every write checks the fencing token of the lease it depends on in
the same transaction, so a scheduler that stalled past a lease cannot write after a
takeover.
While the store is down, rounds back off (1 s doubling to 30 s) and log one traceback,
then one line per retry, and one when the store answers again (:mod:`chronoq.backoff`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from chronoq.backoff import Outage
from chronoq.partitions import PARTITIONS, Ownership
from chronoq.retention import Sweeper
from chronoq.store import Completion, TaskRecord, counts
from chronoq.store.interfaces import SchedulerStore
from chronoq.store.leases import Fence, NotLeader
from chronoq.worker import default_worker_id

log = logging.getLogger("chronoq.scheduler")

#: the lease every scheduler competes for; its holder is the one that acts
LEASE = "scheduler"


class Scheduler:
    def __init__(
        self,
        store: SchedulerStore,
        *,
        poll_seconds: float = 1.0,
        reap_seconds: float = 1.0,
        batch: int = 1000,
        worker_timeout: float = 30.0,
        lease_ttl: float = 5.0,
        scheduler_id: str | None = None,
        reconcile: Callable[[], Awaitable[int]] | None = None,
        reconcile_seconds: float = 5.0,
        retention: Sweeper | None = None,
        fire_ahead: float = 0.0,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.reap_seconds = reap_seconds
        self.batch = batch
        self.worker_timeout = worker_timeout
        self.lease_ttl = lease_ttl
        self.id = scheduler_id or default_worker_id()
        self.fence: Fence | None = None
        #: the schedule partitions this scheduler fires (chronoq.partitions)
        self.ownership = Ownership(self.id, lease_ttl)
        self.leaderships = 0
        self._renew_at = 0.0
        self.reconcile = reconcile
        self.reconcile_seconds = reconcile_seconds
        #: the leader's background purge of expired finished tasks (chronoq.retention)
        self.retention = retention
        #: seconds before its slot a schedule's task is inserted (``scheduled``, promoted
        #: on time by the leader): a burst of slots on one instant is fired before it
        self.fire_ahead = fire_ahead
        self.republished = 0
        self.promoted = 0
        self.fired = 0
        self.reaped = 0
        self._stopping = asyncio.Event()
        self._next_reap = 0.0
        self._next_reconcile = 0.0
        self._next_count = 0.0
        #: store failures in a row: rounds back off 1 s doubling to 30 s, one traceback
        self._outage = Outage("scheduler round", log)
        self._reconcile_outage = Outage("broker reconcile", log, level=logging.WARNING)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        wake = self.store.hub.schedule_event()
        stopping = asyncio.ensure_future(self._stopping.wait())
        self._next_reconcile = time.time() + self.reconcile_seconds
        log.info("scheduler started")
        try:
            while not self._stopping.is_set():
                wake.clear()
                try:
                    sleep = await self._round(time.time())
                except NotLeader as exc:
                    log.warning("%s; following again", exc)
                    self.fence = None
                    continue
                except Exception as exc:  # the store is down: back off, never spin
                    await asyncio.wait([stopping], timeout=self._outage.failed(exc))
                    continue
                self._outage.over()
                if sleep is None:  # following: look at the lease again soon
                    await asyncio.wait([stopping], timeout=min(1.0, self.lease_ttl / 3))
                elif sleep > 0:
                    waiter = asyncio.ensure_future(wake.wait())
                    await asyncio.wait(
                        [waiter, stopping], timeout=sleep, return_when=asyncio.FIRST_COMPLETED
                    )
                    waiter.cancel()
        finally:
            stopping.cancel()
            self.store.hub.discard(wake)
            if self.retention is not None:
                await self.retention.stop()
            try:
                await self.ownership.release(self.store)
                if self.fence is not None:
                    await self.store.leases.release(self.fence)
            except Exception:
                log.warning("could not release the scheduler's leases")
            log.info(
                "scheduler stopped (fired %d, promoted %d, rescued %d)",
                self.fired,
                self.promoted,
                self.reaped,
            )

    async def _round(self, now: float) -> float | None:
        """One round: fire (the partitions held), then, while leading, promote, reap,
        reconcile. Returns the seconds until the next (0: more are due at once; a
        submission wakes it earlier), None while it holds nothing."""
        leading = await self._lead(now)
        more = False
        if self.ownership.fences:
            try:
                _, more = await self._drain(now, self._fire)
            except NotLeader as exc:  # a partition changed hands: look at the leases again
                log.info("%s; renewing the partitions", exc)
                self.ownership.fences = {}
                self._renew_at = 0.0
                return 0.0
        if not leading:
            if not self.ownership.fences:
                return None
            return 0.0 if more else await self._sleep(tasks=False)
        _, more_due = await self._drain(now, self._promote)
        if more or more_due:
            return 0.0  # the lease needs renewing first; the rest is still due: no sleep
        if now >= self._next_reap:
            await self.reap(now)
            self._next_reap = now + self.reap_seconds
        if self.reconcile is not None and now >= self._next_reconcile:
            self._next_reconcile = now + self.reconcile_seconds
            await self._reconcile()
        if self.retention is not None:
            self.retention.due(now, lambda: self.leading)
        if now >= self._next_count:  # roll finished tasks up once enough piled up
            self._next_count = now + counts.ADVANCE_SECONDS
            self.store.advance_counts_soon(now)
        return await self._sleep(tasks=True)

    async def _sleep(self, *, tasks: bool) -> float:
        """Seconds until the next due time (waiting tasks while leading, slots of the
        partitions held), the next reap and lease renewal, at most ``poll_seconds``."""
        held = None if self.ownership.all else self.ownership.partitions
        due = await self.store.next_due_at(held, tasks=tasks, ahead=self.fire_ahead)
        now = time.time()
        sleep = min(self.poll_seconds, max(self._renew_at - now, 0.0))
        if tasks:
            sleep = min(sleep, max(self._next_reap - now, 0.0))
        return sleep if due is None else min(sleep, max(due - now, 0.0))

    async def _fire(self, now: float) -> int:
        fired = await self.store.schedules.fire_due(
            now, self.batch, owned=list(self.ownership.fences.values()), ahead=self.fire_ahead
        )
        self.fired += fired
        return fired

    async def _promote(self, now: float) -> int:
        moved = len(await self.store.promote_due(now, self.batch, self.fence))
        self.promoted += moved
        return moved

    async def _drain(
        self, now: float, batch: Callable[[float], Awaitable[int]]
    ) -> tuple[int, bool]:
        """Repeat ``batch(now)`` (one short transaction of at most ``self.batch`` rows, each
        committed and announced before the next starts) until it comes back short, so a
        burst is handled at once in bounded pieces; returns ``(rows, more)``. It stops early
        (``more``) when the lease is due for renewal, so a long burst never outlives it."""
        total = 0
        while True:
            n = await batch(now)
            total += n
            if n < self.batch:
                return total, False
            now = max(now, time.time())
            if now >= self._renew_at:
                return total, True

    async def _reconcile(self) -> None:
        """Re-publish tasks the broker lost. Its own outage (Redis down) must not hold up
        the rounds: it is retried at the next reconcile period."""
        assert self.reconcile is not None
        try:
            self.republished += await self.reconcile()
        except Exception as exc:
            self._reconcile_outage.failed(exc)
            return
        self._reconcile_outage.over()

    async def _lead(self, now: float) -> bool:
        """Take or renew the scheduler lease and the partitions (at most once a second);
        True while leading."""
        if now < self._renew_at:
            return self.fence is not None
        fence = await self.store.leases.try_take(LEASE, self.id, now, self.lease_ttl)
        if fence is not None and (self.fence is None or fence.token != self.fence.token):
            self.leaderships += 1
            log.info("scheduler %s leads (fencing token %d)", self.id, fence.token)
        elif fence is None and self.fence is not None:
            log.warning("scheduler %s lost the lease; following", self.id)
        self.fence = fence
        held = set(self.ownership.fences)
        await self.ownership.renew(self.store, now)
        if set(self.ownership.fences) != held:
            log.info(
                "scheduler %s fires %d of %d schedule partitions",
                self.id,
                len(self.ownership.fences),
                PARTITIONS,
            )
        self._renew_at = now + min(1.0, self.lease_ttl / 3)
        return fence is not None

    @property
    def leading(self) -> bool:
        return self.fence is not None

    async def reap(self, now: float) -> int:
        """Mark silent workers dead; fail every attempt whose worker stopped renewing its
        lease (it is retried, or dead when it was the last attempt). The retries of a dead
        worker's tasks are spread apart, and a task whose attempts died before waits
        longer (:func:`chronoq.states.after_death`), so a poison task does not take the
        tasks that died with it down again on their retry."""
        for worker_id in await self.store.workers.mark_dead(now - self.worker_timeout):
            log.warning("worker %s stopped heartbeating; marked dead", worker_id)
        if timed_out := await self.store.time_out_workflows(now):
            log.warning("%d workflow(s) timed out: their unfinished steps cancelled", timed_out)
        expired = await self.store.expired_leases(now)
        if not expired:
            return 0
        deaths = await self.store.deaths([task.id for task in expired])
        completions = [self._lost(task, now, deaths.get(task.id, 0) + 1) for task in expired]
        await self.store.complete(completions, self.fence, lapsed=now)
        for task, completion in zip(expired, completions, strict=True):
            after = (
                "dead"
                if completion.next_run_at is None
                else f"retry in {completion.next_run_at - now:.1f}s"
            )
            log.warning(
                "task %s (%s) attempt %d lost with worker %s; %s",
                task.id,
                task.name,
                task.attempts,
                task.worker_id,
                after,
                extra=task.log_fields("lost"),
            )
        self.reaped += len(expired)
        return len(expired)

    @staticmethod
    def _lost(task: TaskRecord, now: float, deaths: int) -> Completion:
        """The end of an attempt whose lease ran out: its ``deaths``-th died attempt."""
        return Completion.died(
            task, now, "lost", f"worker {task.worker_id} stopped renewing its lease", deaths
        )
