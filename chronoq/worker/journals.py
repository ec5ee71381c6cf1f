"""Each attempt's captured output and progress, buffered and written to the store apart
from the attempt's completion.

An :class:`AttemptLog` is the journal of one attempt (:mod:`chronoq.logcapture` writes to
it, from the loop or from a sync handler's thread, and a pool child's lines arrive through
it): it splits output into lines, keeps at most :data:`chronoq.logcapture.LIMIT` bytes
(then one line saying the log was truncated) and the latest progress value. The worker's
:class:`LogBuffer` writes what every open attempt gathered every ``flush_seconds`` in one
transaction (``task_logs`` chunks and ``task_progress`` rows, :mod:`chronoq.store.tasklogs`)
and then publishes the progress events and, when anyone may hear them, a log event per
chunk (:class:`chronoq.events.LogEvent`; a flush's lines are cut into chunks of at most
:data:`chronoq.events.LOG_EVENT_BYTES`, so every event stays that small). Nothing is
written for an attempt that logs nothing; logs are best-effort (a store outage drops the
lines of that flush, with one warning), a task's state never depends on them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from chronoq.backoff import Outage
from chronoq.events import LOG_EVENT_BYTES, LogEvent, ProgressEvent
from chronoq.logcapture import LIMIT, LINE_LIMIT
from chronoq.store import TaskRecord, tasklogs
from chronoq.store.interfaces import WorkerStore

log = logging.getLogger("chronoq.worker")

Entry = tuple[float, str, str]


class AttemptLog:
    """The journal of attempt ``attempt`` of ``task`` (cheap to make: every attempt has
    one, and most never write to it)."""

    __slots__ = (
        "_lock",
        "_partial",
        "_pending",
        "_progress",
        "attempt",
        "closed",
        "limit",
        "seq",
        "task",
        "truncated",
        "used",
    )

    def __init__(self, task: TaskRecord, limit: int = LIMIT) -> None:
        self.task = task
        self.attempt = task.attempts
        self.limit = limit
        self.used = 0
        self.truncated = False
        self.closed = False
        self.seq = 0
        self._lock = threading.Lock()
        self._pending: list[Entry] = []
        self._partial: dict[str, str] | None = None  # stdout/stderr text without its newline
        self._progress: tuple[float, str | None, float] | None = None

    # -- Journal -----------------------------------------------------------------------------
    def write(self, stream: str, text: str) -> None:
        with self._lock:
            if self.truncated or self.closed:
                return
            if stream == "log":
                self._add(stream, text.rstrip("\n"))
                return
            partial = self._partial
            if partial is None:
                partial = self._partial = {}
            *lines, rest = (partial.get(stream, "") + text).split("\n")
            for line in lines:
                self._add(stream, line)
            if len(rest) > LINE_LIMIT:
                self._add(stream, rest)
                rest = ""
            partial[stream] = rest

    def progress(self, value: float, message: str | None) -> None:
        with self._lock:
            self._progress = (value, message, time.time())

    # -- the worker's side -------------------------------------------------------------------
    def close(self) -> None:
        """The attempt ended: lines still without their newline are kept."""
        if self._partial is None:
            self.closed = True
            return
        with self._lock:
            for stream, rest in self._partial.items():
                if rest:
                    self._add(stream, rest)
            self._partial = None
            self.closed = True

    def take(self) -> tuple[list[Entry], tuple[float, str | None, float] | None]:
        if not self._pending and self._progress is None:
            return [], None
        with self._lock:
            entries, self._pending = self._pending, []
            progress, self._progress = self._progress, None
        return entries, progress

    def _add(self, stream: str, line: str) -> None:
        if self.truncated:
            return
        if len(line) > LINE_LIMIT:
            line = line[:LINE_LIMIT] + " [line cut]"
        data = line.encode("utf-8", "replace")  # lone surrogates become "?"
        line = data.decode("utf-8")
        size = len(data) + 1
        if self.used + size > self.limit:
            self.truncated = True
            self._pending.append(
                (
                    time.time(),
                    "truncated",
                    f"[log truncated: more than {self.limit} bytes in this attempt]",
                )
            )
            return
        self.used += size
        self._pending.append((time.time(), stream, line))


class LogBuffer:
    """Writes the worker's open attempt logs every ``flush_seconds``."""

    def __init__(
        self, store: WorkerStore, worker_id: str, flush_seconds: float = 0.5, limit: int = LIMIT
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.flush_seconds = flush_seconds
        self.limit = limit
        self.open: set[AttemptLog] = set()
        self._outage = Outage("writing task logs", log, first=flush_seconds, cap=5.0)

    def begin(self, task: TaskRecord) -> AttemptLog:
        journal = AttemptLog(task, self.limit)
        self.open.add(journal)
        return journal

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Write what the open attempts gathered; forget the attempts that ended."""
        chunks: list[tasklogs.Chunk] = []
        steps: list[tasklogs.Step] = []
        events: list[ProgressEvent] = []
        logs: list[LogEvent] | None = [] if self.store.events.logs_active else None
        for journal in list(self.open):
            closed = journal.closed
            entries, progress = journal.take()
            task = journal.task
            for piece in pieces(entries):
                journal.seq += 1
                chunk = tasklogs.Chunk(task.id, journal.attempt, journal.seq, piece[-1][0], piece)
                chunks.append(chunk)
                if logs is not None:
                    logs.append(
                        LogEvent(
                            task.id,
                            task.name,
                            task.queue,
                            chunk.attempt,
                            chunk.seq,
                            chunk.at,
                            piece,
                            self.worker_id,
                            task.namespace,
                        )
                    )
            if progress is not None:
                value, message, at = progress
                steps.append(tasklogs.Step(task.id, journal.attempt, value, message, at))
                events.append(
                    ProgressEvent(
                        task.id,
                        task.name,
                        task.queue,
                        journal.attempt,
                        at,
                        value,
                        message,
                        self.worker_id,
                        task.namespace,
                    )
                )
            if closed:
                self.open.discard(journal)
        if not chunks and not steps:
            return
        try:
            await self.store.write_journals(chunks, steps, events, logs or ())
        except Exception as exc:
            self._outage.failed(exc)
            return
        self._outage.over()


def pieces(entries: list[Entry], limit: int = LOG_EVENT_BYTES) -> list[list[Entry]]:
    """``entries`` cut into runs of at most ``limit`` bytes of text (UTF-8, a newline
    each), in order; a longer line is a run of its own."""
    if not entries:
        return []
    out: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        n = len(entry[2].encode("utf-8", "replace")) + 1
        if out[-1] and size + n > limit:
            out.append([])
            size = 0
        out[-1].append(entry)
        size += n
    return out
