"""Retention: how long finished tasks are kept, and the purge that removes older ones.

A policy gives each finished status an age, with per-queue overrides
(``CHRONOQ_RETENTION="succeeded=7d,cancelled=7d,dead=30d,reports:succeeded=1d"``). The
scheduler leader sweeps every ``CHRONOQ_RETENTION_INTERVAL`` seconds in the background
(:class:`Sweeper`), never inside its round: batches of ``CHRONOQ_RETENTION_BATCH`` rows,
each its own short transaction, with a pause between them, so firing and promotion are
never queued behind a purge. ``chronoq purge`` and ``DELETE /v1/tasks`` run the same
:func:`purge` on demand. Deleting expired finished rows is idempotent, so it needs no
fencing: two processes purging at once only share the work.

Workflow nodes are not purged one by one: a workflow goes whole (its row, nodes, their
attempts and edges) once it ended, every node ended, and none of its nodes would still be
kept on its own by the policy, counted from the workflow's last node's end
(:func:`chronoq.store.workflows.purge`; ``upstream_failed`` nodes are kept as ``dead``).
The sweep does that after the tasks.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from chronoq.config import Settings
from chronoq.durations import parse_duration
from chronoq.states import TERMINAL, Status
from chronoq.store import Store, workflows
from chronoq.store.retention import Expired, delete_batch, finished_queues
from chronoq.store.retention import count as count_expired

log = logging.getLogger("chronoq.retention")

#: the documented defaults; entries in ``CHRONOQ_RETENTION`` override them one by one
DEFAULT = "succeeded=7d,cancelled=7d,dead=30d"
#: statuses in the order purges walk them and reports list them
FINISHED: tuple[Status, ...] = (Status.SUCCEEDED, Status.CANCELLED, Status.DEAD)
_OFF = ("off", "0", "forever", "never")


class PolicyError(ValueError):
    """A retention policy that does not parse; the message names the bad entry."""


@dataclass(frozen=True, slots=True)
class Policy:
    """Seconds each finished status is kept (None: forever), and per-queue overrides."""

    ages: Mapping[Status, float | None]
    queues: Mapping[str, Mapping[Status, float | None]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Policy:
        """``[queue:]status=age`` entries, comma-separated, over :data:`DEFAULT`. An age is
        a duration (``7d``, ``12h``, ``90m``); ``0`` or ``off`` keeps forever, and the
        whole policy ``off`` turns retention off."""
        if text.strip().lower() in _OFF:
            return cls({s: None for s in FINISHED})
        ages: dict[Status, float | None] = {}
        queues: dict[str, dict[Status, float | None]] = {}
        for (queue, status), age in {**_rules(DEFAULT), **_rules(text)}.items():
            (ages if queue is None else queues.setdefault(queue, {}))[status] = age
        return cls(ages, queues)

    def age(self, queue: str, status: Status) -> float | None:
        """How long ``status`` tasks of ``queue`` are kept (None: forever)."""
        override = self.queues.get(queue, {})
        return override[status] if status in override else self.ages.get(status)

    def expired(self, queues: Mapping[Status, Iterable[str]], now: float) -> list[Expired]:
        """What the policy purges at ``now``, given the queues holding each status."""
        found = []
        for status in FINISHED:
            for queue in queues.get(status, ()):
                age = self.age(queue, status)
                if age is not None:
                    found.append(Expired(status, queue, now - age))
        return found

    def describe(self) -> str:
        def one(age: float | None) -> str:
            return "off" if age is None else f"{age / 86400:g}d"

        parts = [f"{s}={one(self.ages.get(s))}" for s in FINISHED]
        parts += [
            f"{q}:{s}={one(a)}"
            for q, rules in sorted(self.queues.items())
            for s, a in rules.items()
        ]
        return ",".join(parts)


def _rules(text: str) -> dict[tuple[str | None, Status], float | None]:
    """``(queue or None, status) -> age`` of each entry; an entry given twice is an error."""
    rules: dict[tuple[str | None, Status], float | None] = {}
    for entry in filter(str.strip, text.split(",")):
        queue, status, age = _entry(entry)
        if (queue, status) in rules:
            what = status if queue is None else f"{status} in queue {queue!r}"
            raise PolicyError(f"retention entry {entry.strip()!r}: {what} is given twice")
        rules[(queue, status)] = age
    return rules


def _entry(entry: str) -> tuple[str | None, Status, float | None]:
    """One ``[queue:]status=age`` entry."""
    rule, eq, age_text = entry.strip().partition("=")
    if not eq:
        raise PolicyError(
            f"retention entry {entry.strip()!r}: expected [queue:]status=age, "
            "e.g. dead=30d or reports:succeeded=1d"
        )
    queue, colon, status_text = rule.strip().rpartition(":")
    if colon and not queue.strip():
        raise PolicyError(f"retention entry {entry.strip()!r}: the queue name is empty")
    status = next((s for s in TERMINAL if s.value == status_text.strip().lower()), None)
    if status is None:
        raise PolicyError(
            f"retention entry {entry.strip()!r}: {status_text.strip()!r} is "
            f"not a finished status (use {', '.join(FINISHED)})"
        )
    age_text = age_text.strip().lower()
    if age_text in _OFF:
        return (queue.strip() or None), status, None
    try:
        age = parse_duration(age_text)
    except ValueError as exc:
        raise PolicyError(f"retention entry {entry.strip()!r}: {exc}, or off") from None
    return (queue.strip() or None), status, (None if age == 0 else age)


class Export:
    """Purged tasks as gzip JSON lines in ``directory``: one file per purge, one line per
    task (its ``GET /v1/tasks/{id}`` document with ``attempt_history``). Each batch is
    appended as a complete gzip member and fsynced before its rows are deleted, so the
    file is readable (``zcat``, ``gzip.open``) up to the last batch whatever happens."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self.written = 0

    async def save(self, tasks: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._write, tasks)
        self.written += len(tasks)

    def _write(self, tasks: list[dict[str, Any]]) -> None:
        created = self.path is None
        if self.path is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            self.path = self.directory / f"chronoq-purge-{stamp}-{os.getpid()}.jsonl.gz"
        data = gzip.compress(b"".join(orjson.dumps(t) + b"\n" for t in tasks), compresslevel=6)
        with self.path.open("ab") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if created:  # the new file's directory entry must survive a crash too
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@dataclass(slots=True)
class Progress:
    """Rows deleted so far, per (status, queue); ``rate()`` in rows a second."""

    started: float = field(default_factory=time.monotonic)
    deleted: dict[tuple[Status, str], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def rate(self) -> float:
        return self.total / max(time.monotonic() - self.started, 1e-9)


async def purge(
    store: Store,
    expired: Iterable[Expired],
    *,
    batch: int = 1000,
    pause: float = 0.0,
    export: Export | None = None,
    on_batch: Callable[[Progress], None] | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> Progress:
    """Delete what ``expired`` selects, ``batch`` rows per transaction, sleeping ``pause``
    seconds between batches; ``keep_going`` is asked before each batch."""
    progress = Progress()
    save = export.save if export is not None else None
    for selection in expired:
        key = (selection.status, selection.queue)
        cursor: tuple[float, str] | None = None
        while keep_going():
            deleted, cursor = await delete_batch(store, selection, cursor, batch, save)
            if cursor is None:
                break
            progress.deleted[key] = progress.deleted.get(key, 0) + deleted
            if on_batch is not None:
                on_batch(progress)
            if pause > 0:
                await asyncio.sleep(pause)
    return progress


async def queues_by_status(
    store: Store, statuses: Iterable[Status] = FINISHED
) -> dict[Status, list[str]]:
    return {s: await finished_queues(store, s) for s in statuses}


async def counts(store: Store, expired: Iterable[Expired]) -> dict[tuple[Status, str], int]:
    """What a purge of ``expired`` would delete now, per (status, queue) (non-zero only)."""
    found: dict[tuple[Status, str], int] = {}
    for selection in expired:
        n = await count_expired(store, selection)
        key = (selection.status, selection.queue)
        if n:
            found[key] = found.get(key, 0) + n
    return found


def selections(
    queues: Mapping[Status, Iterable[str]],
    before: float,
    queue: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
) -> list[Expired]:
    """Tasks of these statuses (and ``queue``) that finished before ``before``."""
    return [
        Expired(status, q, before, namespace, name)
        for status, found in queues.items()
        for q in found
        if queue is None or q == queue
    ]


@dataclass
class Sweeper:
    """The leader's continuous retention: :meth:`due`, called from each scheduler round,
    starts a sweep in the background when one is due and none runs; the sweep stops
    between batches once ``leading()`` turns false."""

    store: Store
    policy: Policy
    interval: float = 60.0
    batch: int = 1000
    pause: float = 0.05
    export_dir: str | None = None
    #: tasks purged, workflows purged (each whole) and sweeps finished so far
    purged: int = field(default=0, init=False)
    purged_workflows: int = field(default=0, init=False)
    sweeps: int = field(default=0, init=False)
    _next: float = field(default=0.0, init=False)
    _job: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def enabled(self) -> bool:
        return any(a is not None for a in self.policy.ages.values()) or any(
            a is not None for rules in self.policy.queues.values() for a in rules.values()
        )

    def due(self, now: float, leading: Callable[[], bool]) -> None:
        """Start a sweep if one is due (never waits for it)."""
        if not self.enabled or now < self._next or (self._job is not None and not self._job.done()):
            return
        self._next = now + self.interval
        self._job = asyncio.get_running_loop().create_task(self._sweep(leading), name="retention")

    async def _sweep(self, leading: Callable[[], bool]) -> None:
        try:
            queues = await queues_by_status(self.store)
            export = Export(self.export_dir) if self.export_dir else None
            done = await purge(
                self.store,
                self.policy.expired(queues, time.time()),
                batch=self.batch,
                pause=self.pause,
                export=export,
                keep_going=leading,
            )
            flows = (
                await workflows.purge(self.store, self.policy.age, time.time(), self.batch)
                if leading()
                else 0
            )
        except Exception as exc:  # the store is down: the next sweep tries again
            log.warning("retention sweep failed: %s: %s", type(exc).__name__, exc)
            return
        self.sweeps += 1
        self.purged += done.total
        self.purged_workflows += flows
        if flows:
            log.info("retention purged %d finished workflows", flows)
        if done.total:
            log.info(
                "retention purged %d finished tasks (%.0f rows/s)%s",
                done.total,
                done.rate(),
                f" exported to {export.path}" if export and export.path else "",
                extra={"purged": {f"{s}:{q}": n for (s, q), n in done.deleted.items()}},
            )

    async def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)
            self._job = None


def sweeper_for(store: Store, settings: Settings) -> Sweeper:
    """The leader's sweeper as the ``CHRONOQ_RETENTION*`` settings describe it."""
    return Sweeper(
        store,
        Policy.parse(settings.retention),
        interval=settings.retention_interval,
        batch=settings.retention_batch,
        pause=settings.retention_pause,
        export_dir=settings.retention_export_dir,
    )
