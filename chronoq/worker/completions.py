"""The completion buffer: ended attempts wait here until one write records them all.

A flush loop writes everything buffered in one transaction (one statement on PostgreSQL),
so a busy worker pays one commit for many results, then tells the broker which it may
acknowledge. While the store is unreachable the results stay here and the writes back
off; a value the store refuses is written attempt by attempt, so it holds up no other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from chronoq.backoff import Outage
from chronoq.broker import Broker
from chronoq.store import Completion
from chronoq.store.interfaces import WorkerStore

log = logging.getLogger("chronoq.worker")


class CompletionBuffer:
    """Buffers worker ``worker_id``'s completions and records them in batches."""

    def __init__(self, store: WorkerStore, broker: Broker, worker_id: str) -> None:
        self.store = store
        self.broker = broker
        self.worker_id = worker_id
        #: ended attempts not written yet
        self.pending: list[Completion] = []
        self._recording: list[Completion] = []  # the results being written now
        self._added = asyncio.Event()
        self._closing = False
        self._outage = Outage("recording results", log, first=0.1, cap=5.0, level=logging.WARNING)

    def add(self, completion: Completion) -> None:
        self.pending.append(completion)
        self._added.set()

    def task_ids(self) -> Iterator[str]:
        """The tasks whose outcome is not recorded yet (being written included)."""
        yield from (c.task_id for c in self.pending)
        yield from (c.task_id for c in self._recording)

    async def run(self) -> None:
        """The flush loop, until :meth:`closing`."""
        while not self._closing:
            await self._added.wait()
            self._added.clear()
            await self._flush_all()

    def closing(self) -> None:
        """The worker stops: the flush loop finishes its batch (never cut mid-write) and
        ends; :meth:`final_flush` writes the rest."""
        self._closing = True
        self._added.set()

    async def _flush_all(self, *, final: bool = False) -> None:
        """Record every finished attempt, retrying with backoff (:attr:`_outage`) while the
        store or broker is unreachable; once closing, only the ``final`` flush retries."""
        while self.pending:
            batch, self.pending = self.pending, []
            self._recording = batch
            try:
                written, left, error = await self._record(batch)
                if written:
                    await self.broker.done([c.task_id for c in written])
            except asyncio.CancelledError:  # a final flush out of time
                self.pending[:0] = batch
                raise
            except Exception as exc:  # the broker: recording the batch again changes nothing
                left, error = batch, exc
            finally:
                self._recording = []
            if not left:
                self._outage.over()
                continue
            self.pending[:0] = left
            assert error is not None  # left behind only by a failure
            delay = self._outage.failed(error)
            if self._closing and not final:
                return
            await asyncio.sleep(delay)

    async def _record(
        self, batch: list[Completion]
    ) -> tuple[list[Completion], list[Completion], Exception | None]:
        """Write a batch in one transaction. If the store refuses it (not an outage: a value
        it cannot hold), write the attempts one by one, so one bad row never holds up the
        others. Returns (written, left, outage): ``left`` must wait, the store being
        unreachable (``outage`` says why)."""
        try:
            refusal = await self._refusal(batch)
        except self.store.outage_errors as exc:
            return [], batch, exc
        if refusal is None:
            return batch, [], None
        if len(batch) > 1:
            log.warning(
                "the store refused a batch of %d results (%s); writing them one by one",
                len(batch),
                type(refusal).__name__,
            )
        for index, completion in enumerate(batch):
            try:
                await self._record_one(completion, refusal if len(batch) == 1 else None)
            except self.store.outage_errors as exc:
                return batch[:index], batch[index:], exc
        return batch, [], None

    async def _record_one(self, completion: Completion, refusal: Exception | None) -> None:
        """Write one attempt (``refusal``: the store refused it already). One the store
        refuses is recorded as a failed attempt saying why; if even that is refused, it is
        dropped (its lease lapses and the task runs again). Raises an outage error."""
        if refusal is None:
            refusal = await self._refusal([completion])
            if refusal is None:
                return
        log.error(
            "the store refused the result of task %s attempt %d (%s: %.300r); "
            "recording the attempt as failed",
            completion.task_id,
            completion.attempt,
            type(refusal).__name__,
            str(refusal),
        )
        failed = completion.refused(refusal)
        if failed is not None:
            refusal = await self._refusal([failed])
            if refusal is None:
                return
        log.error(
            "the store refused task %s attempt %d's failure too (%s); it runs again "
            "once its lease lapses",
            completion.task_id,
            completion.attempt,
            type(refusal).__name__,
        )

    async def _refusal(self, completions: list[Completion]) -> Exception | None:
        """Write ``completions``: None once written, else why the store refused them.
        Raises the store's outage errors (it is unreachable, nothing was refused)."""
        try:
            await self.store.complete(completions)
        except Exception as exc:
            if isinstance(exc, self.store.outage_errors):
                raise
            return exc
        return None

    async def final_flush(self, flusher: asyncio.Task[None], flush_seconds: float) -> None:
        """Wait for the flusher's last write, then record what is left, for at most
        ``flush_seconds`` in all: a stopping worker never hangs on a store that will not
        take its results. Those it gives up on run again when their leases lapse."""
        try:
            async with asyncio.timeout(flush_seconds):
                await asyncio.gather(flusher, return_exceptions=True)
                await self._flush_all(final=True)
        except TimeoutError:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        if self.pending:
            ids = [c.task_id for c in self.pending]
            log.error(
                "worker %s stops with %d results not recorded after %.0fs (tasks %s); "
                "they run again once their leases lapse",
                self.worker_id,
                len(ids),
                flush_seconds,
                ", ".join(ids[:20]) + (" ..." * (len(ids) > 20)),
            )
