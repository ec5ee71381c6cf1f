"""Recurring-schedule benchmark: firing accuracy, and scheduler tick cost vs stored schedules.

Run from the repository root (worker processes import ``benchmarks.schedule_app``)::

    python benchmarks/schedules.py                          # (a) on both back-ends, then (b)
    python benchmarks/schedules.py --part fire --backend sqlite --schedules 1000 --seconds 60
    python benchmarks/schedules.py --part fire --backend postgres --workers 2
    python benchmarks/schedules.py --part fire --backend postgres --workers 2 \\
        --schedules 10000 --seconds 1 --schedulers 1,2   # one burst of 10,000 crons
    python benchmarks/schedules.py --part scale --scale 1000,100000,1000000 --ticks 20
    python benchmarks/schedules.py --json > schedules.json

Every run uses a fresh database: SQLite a new file in a temporary directory, PostgreSQL a
new schema ``bench_<random>`` (``?schema=`` URL option) dropped at the end (``--keep``
keeps them). Progress goes to stderr; the tables (or, with ``--json``, one JSON document)
to stdout.

(a) ``--part fire``: S schedules firing every second for T seconds
------------------------------------------------------------------
``--schedules S`` schedules are created through ``Store.create_schedule`` with the cron
``* * * * * *`` (6 fields: every second), task ``bench.tick`` (a no-op, one attempt),
``start_at`` = W0 and ``end_at`` = W0 + T - 0.5, where W0 is a whole second a few seconds
after start-up (``--lead-seconds``; enough to create the schedules first). So the window
is exactly the T slots W0, W0+1, …, W0+T-1 of every schedule: S x T expected slots. One
in-process :class:`~chronoq.scheduler.Scheduler` runs on the store for the whole window
(or, with ``--schedulers K``, K ``chronoq scheduler`` processes that share the schedule
partitions, :mod:`chronoq.partitions`; a list such as ``1,2`` runs once per count, side
by side in the table; commit lag is then not measured),
with an in-process :class:`~chronoq.worker.Worker` (``--workers 0``, the default, as
``chronoq dev`` does) or K worker processes ``chronoq worker --app
benchmarks.schedule_app:app`` (``--workers K``). After the window the benchmark waits
until every fired task finished, stops everything and reads the database:

``fire lag``
    ``tasks.created_at - tasks.slot`` for every fired task: how late after its nominal
    time the scheduler inserted the slot's task (p50/p95/p99/max, ms). Negative when the
    slot was fired ahead (``--fire-ahead``, ``CHRONOQ_SCHEDULE_FIRE_AHEAD``, 2 s by
    default): the task then waited ``scheduled`` until the leader promoted it at its slot,
    and only the start lag says how late it ran.
``commit lag``
    (wall-clock time the ``schedules.fire_due`` call that inserted the task returned) -
    ``tasks.slot``: when the task became visible to workers. ``created_at`` is the ``now``
    the scheduler passed *into* that call, so fire lag leaves out the call's own duration,
    which grows with the number of slots fired at once.
``start lag``
    ``attempts.started_at - tasks.slot`` (first attempt): how late the handler started;
    commit lag plus the worker's pick-up time. Both sides are ``time.time()`` on this machine.
``expected / fired``
    S x T, and the number of tasks whose (schedule, slot) lies in the window.
``missed``
    expected (schedule, slot) pairs that have no task.
``duplicates``
    (schedule_id, slot) groups holding more than one task (``GROUP BY … HAVING COUNT(*) >
    1``); the unique index ``tasks_schedule_slot`` should make this 0.
``outside``
    tasks whose slot is not one of the window's slots (should be 0).
``fire call``
    duration of each ``schedules.fire_due`` call that fired something (p50/max, ms) and
    tasks per call: the scheduler's own cost of firing S slots.
``process CPU``
    CPU time of this process (scheduler, plus the worker when in-process) during the
    window, as % of one core.

(b) ``--part scale``: scheduler tick time vs the number of stored schedules (PostgreSQL)
---------------------------------------------------------------------------------------
For each N of ``--scale``, in a fresh schema: one ``INSERT … SELECT generate_series``
loads N schedules (UUIDv7-like ascending ids, daily crons ``M H * * *`` at minutes
spread over the next 1-24 h, with ``next_fire_at`` exactly what the rule gives, so
none is due during the test; the per-row wake-up trigger is skipped with
``session_replication_role = replica``), then ``ANALYZE``; then ``--due`` schedules
firing every second are added through ``create_schedule``. Then ``--ticks`` times, once
per second, it times what one ``Scheduler.run`` round does:
``schedules.fire_due(now)`` + ``promote_due(now)`` + ``next_due_at()``:

``busy tick``
    just after a whole second, when the ``--due`` schedules are due (fires ``--due``
    tasks per tick);
``idle tick``
    half a second later, when nothing is due: the pure cost of finding nothing.

It prints median/p95 ms per tick (and per call), the load and ANALYZE times, and the
table/index sizes. The tick time should not grow with N (``schedules_due`` index on
``next_fire_at``). If the median at the largest N is more than ``--flat-factor`` times the
one at the smallest N, the result says NOT FLAT and the ``EXPLAIN (ANALYZE, BUFFERS)``
plans of the tick's queries are printed (always with ``--explain``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

import chronoq
from chronoq.config import Settings
from chronoq.models import ScheduleCreate, TaskTemplate
from chronoq.partitions import PARTITIONS
from chronoq.scheduler import Scheduler
from chronoq.store import Store, create_store
from chronoq.store.postgres import split_schema
from chronoq.store.schedules import ScheduleRecord
from chronoq.worker import Worker

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/schedules.py` puts benchmarks/ there instead
    sys.path.insert(0, str(REPO))  # (and the in-process worker imports the bench app)

from benchmarks.common import (  # noqa: E402
    DEFAULT_POSTGRES,
    ChronoqProcesses,
    Database,
    Percentiles,
    drop_schema,
    fetch,
    postgres_database,
    say,
    sqlite_database,
)

APP = "benchmarks.schedule_app:app"
TASK = "bench.tick"  # benchmarks.schedule_app.TASK
EVERY_SECOND = "* * * * * *"
FINISHED = ("succeeded", "failed", "dead", "cancelled")


# -- figures ------------------------------------------------------------------------------------
@dataclass
class FireResult:
    backend: str
    database: str
    schedules: int
    seconds: int
    workers: int
    concurrency: int
    poll_seconds: float | None
    window_start: float = 0.0
    window_end: float = 0.0
    create_seconds: float = 0.0
    created_late_seconds: float = 0.0
    expected: int = 0
    fired: int = 0
    missed: int = 0
    missed_sample: list[str] = field(default_factory=list)
    duplicate_groups: int = 0
    duplicate_tasks: int = 0
    outside_window: int = 0
    not_started: int = 0
    not_succeeded: dict[str, int] = field(default_factory=dict)
    fire_lag: Percentiles = field(default_factory=Percentiles)
    commit_lag: Percentiles = field(default_factory=Percentiles)
    start_lag: Percentiles = field(default_factory=Percentiles)
    fire_calls: Percentiles = field(default_factory=Percentiles)
    tasks_per_fire_call: float = 0.0
    max_fire_lag_by_slot_ms: list[float] = field(default_factory=list)
    process_cpu_percent: float = 0.0
    load_average: float = 0.0
    settle_seconds: float = 0.0
    timed_out: bool = False
    worker_exit_codes: list[int | None] = field(default_factory=list)
    stderr_sample: list[str] = field(default_factory=list)
    error: str | None = None
    #: ``chronoq scheduler`` processes (0: one in-process Scheduler)
    schedulers: int = 0

    @property
    def problems(self) -> str:
        found = []
        if self.error:
            found.append(f"error: {self.error}")
        if self.timed_out:
            found.append("timed out waiting for tasks to finish")
        if self.created_late_seconds > 0:
            found.append(
                f"schedules created {self.created_late_seconds:.2f}s after the "
                "window opened (raise --lead-seconds)"
            )
        if self.missed:
            found.append(f"{self.missed} missed slots")
        if self.duplicate_groups:
            found.append(f"{self.duplicate_groups} duplicated slots")
        if self.outside_window:
            found.append(f"{self.outside_window} tasks outside the window")
        found += [f"{n} {status}" for status, n in self.not_succeeded.items()]
        bad = [c for c in self.worker_exit_codes if c != 0]
        if bad:
            found.append(f"worker exit codes {bad}")
        if self.stderr_sample:
            found.append(f"{len(self.stderr_sample)}+ stderr lines")
        return ", ".join(found) or "none"


@dataclass
class Tick:
    fire_ms: float
    promote_ms: float
    next_due_ms: float
    fired: int
    promoted: int

    @property
    def total_ms(self) -> float:
        return self.fire_ms + self.promote_ms + self.next_due_ms


@dataclass
class TickStats:
    ticks: int = 0
    median_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None
    fire_median_ms: float | None = None
    promote_median_ms: float | None = None
    next_due_median_ms: float | None = None
    fired_per_tick: float = 0.0

    @classmethod
    def of(cls, ticks: Sequence[Tick]) -> TickStats:
        if not ticks:
            return cls()
        total = sorted(t.total_ms for t in ticks)
        p95 = (
            statistics.quantiles(total, n=20, method="inclusive")[18]
            if len(total) > 1
            else total[0]
        )
        return cls(
            ticks=len(ticks),
            median_ms=statistics.median(total),
            p95_ms=p95,
            max_ms=total[-1],
            fire_median_ms=statistics.median(t.fire_ms for t in ticks),
            promote_median_ms=statistics.median(t.promote_ms for t in ticks),
            next_due_median_ms=statistics.median(t.next_due_ms for t in ticks),
            fired_per_tick=statistics.fmean(t.fired for t in ticks),
        )

    def brief(self) -> str:
        if self.median_ms is None or self.p95_ms is None:
            return "-"
        return f"{self.median_ms:.2f} / {self.p95_ms:.2f}"

    def parts(self) -> str:
        if self.fire_median_ms is None:
            return "-"
        return (
            f"{self.fire_median_ms:.2f} + {self.promote_median_ms:.2f} + "
            f"{self.next_due_median_ms:.2f}"
        )


@dataclass
class ScaleResult:
    schedules: int
    due: int
    database: str
    load_seconds: float = 0.0
    load_rows_per_second: float = 0.0
    analyze_seconds: float = 0.0
    table_mib: float = 0.0
    due_index_mib: float = 0.0
    busy: TickStats = field(default_factory=TickStats)
    idle: TickStats = field(default_factory=TickStats)
    rule_check: str = ""
    load_average: float = 0.0
    plans: dict[str, str] = field(default_factory=dict)
    error: str | None = None


# -- databases ----------------------------------------------------------------------------------
def make_database(backend: str, postgres_url: str, keep: bool) -> Database:
    if backend == "sqlite":  # a file in a new temporary directory
        return sqlite_database(Path(tempfile.mkdtemp(prefix="chronoq-schedules-")) / "bench.db")
    return postgres_database(postgres_url)


async def drop_database(database: Database, keep: bool) -> None:
    if keep:
        say(f"  kept {database.label}")
        return
    if database.path is not None:
        shutil.rmtree(database.path.parent, ignore_errors=True)
    if database.schema is not None:
        await drop_schema(database.url, database.schema)


async def scalar(store: Store, sql: str, *args: Any) -> Any:
    rows = await fetch(store, sql, *args)
    return next(iter(dict(rows[0]).values())) if rows else None


def _environment(
    url: str, poll_seconds: float | None, fire_ahead: float | None = None
) -> dict[str, str]:
    env = {**os.environ, "CHRONOQ_DATABASE_URL": url}
    env.pop("CHRONOQ_APP", None)
    if fire_ahead is not None:
        env["CHRONOQ_SCHEDULE_FIRE_AHEAD"] = str(fire_ahead)
    if poll_seconds is not None:
        env["CHRONOQ_POLL_SECONDS"] = str(poll_seconds)
    return env


# -- worker processes ---------------------------------------------------------------------------
class WorkerProcesses(ChronoqProcesses):
    """K ``chronoq worker --app benchmarks.schedule_app:app`` processes."""

    def __init__(
        self, url: str, count: int, concurrency: int, poll_seconds: float | None, log_dir: Path
    ) -> None:
        super().__init__(_environment(url, poll_seconds), log_dir)
        for i in range(count):
            self.spawn(f"worker-{i}", ["worker", "--app", APP, "--concurrency", str(concurrency)])


class SchedulerProcesses(ChronoqProcesses):
    """K ``chronoq scheduler`` processes, sharing the schedule partitions."""

    def __init__(
        self,
        url: str,
        count: int,
        poll_seconds: float | None,
        log_dir: Path,
        fire_ahead: float | None = None,
    ) -> None:
        super().__init__(_environment(url, poll_seconds, fire_ahead), log_dir)
        for i in range(count):
            self.spawn(f"scheduler-{i}", ["scheduler"])


async def wait_partitions_shared(
    store: Store, schedulers: SchedulerProcesses, count: int, max_wait: float = 30.0
) -> None:
    """Until ``count`` schedulers hold every partition between them."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        schedulers.check_alive()
        rows = await fetch(
            store,
            "SELECT holder, COUNT(*) AS n FROM leases WHERE name LIKE 'schedules:%' "
            "AND expires_at > $1 GROUP BY holder",
            time.time(),
        )
        if len(rows) == count and sum(int(r["n"]) for r in rows) == PARTITIONS:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{count} scheduler processes did not share the partitions")


async def wait_workers_ready(
    store: Store, workers: WorkerProcesses, count: int, max_wait: float = 30.0
) -> None:
    """Until ``count`` workers registered themselves (``workers`` table), or 3 s when the
    store has no such table."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        workers.check_alive()
        try:
            alive = await scalar(store, "SELECT COUNT(*) FROM workers WHERE status = 'alive'")
        except Exception:
            await asyncio.sleep(3.0)
            return
        if int(alive) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"worker processes did not register within {max_wait:.0f}s")


# -- (a) firing accuracy ------------------------------------------------------------------------
def _instrument(store: Store, calls: dict[float, tuple[float, float, int]]) -> None:
    """Record every ``schedules.fire_due`` call that fired: ``now`` (the ``created_at`` of
    its tasks) -> (duration, wall-clock time it returned, tasks fired)."""
    original: Callable[..., Awaitable[int]] = store.schedules.fire_due

    async def timed(now: float, *args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        fired = await original(now, *args, **kwargs)
        if fired:
            calls[now] = (time.perf_counter() - started, time.time(), fired)
        return fired

    store.schedules.fire_due = timed  # type: ignore[method-assign]


async def create_schedules(
    store: Store, count: int, start: float, seconds: int, in_flight: int
) -> None:
    template = TaskTemplate(name=TASK, max_attempts=1)
    start_at = datetime.fromtimestamp(start, UTC)
    end_at = datetime.fromtimestamp(start + seconds - 0.5, UTC)
    specs = [
        ScheduleCreate(
            name=f"bench-{i:07d}",
            cron=EVERY_SECOND,
            task=template,
            start_at=start_at,
            end_at=end_at,
        )
        for i in range(count)
    ]
    queue = iter(specs)

    async def lane() -> None:
        for spec in queue:
            await store.schedules.create(spec, time.time())

    await asyncio.gather(*(lane() for _ in range(max(1, in_flight))))


async def fire_backend(backend: str, args: argparse.Namespace, schedulers: int = 0) -> FireResult:
    database = make_database(backend, args.database_url, args.keep)
    result = FireResult(
        backend,
        database.label,
        args.schedules,
        args.seconds,
        args.workers,
        args.concurrency,
        args.poll_seconds,
        schedulers=schedulers,
    )
    say(
        f"(a) {backend}: {args.schedules} schedules every second for {args.seconds}s, "
        f"{'in-process worker' if not args.workers else f'{args.workers} worker processes'}, "
        f"{f'{schedulers} scheduler processes' if schedulers else 'in-process scheduler'}"
        f" ({database.label})"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="chronoq-schedules-logs-"))
    store = create_store(database.url)
    workers: WorkerProcesses | None = None
    procs: SchedulerProcesses | None = None
    try:
        await store.open()
        await store.migrate()
        if args.workers:
            workers = WorkerProcesses(
                database.url, args.workers, args.concurrency, args.poll_seconds, log_dir
            )
            await wait_workers_ready(store, workers, args.workers)
        if schedulers:
            procs = SchedulerProcesses(
                database.url, schedulers, args.poll_seconds, log_dir, args.fire_ahead
            )
            await wait_partitions_shared(store, procs, schedulers)
        lead = args.lead_seconds
        if lead is None:
            lead = 2.0 + args.schedules / (300 if backend == "sqlite" else 500)
        start = float(math.ceil(time.time() + lead))
        result.window_start, result.window_end = start, start + args.seconds
        t0 = time.perf_counter()
        await create_schedules(
            store,
            args.schedules,
            start,
            args.seconds,
            args.in_flight if backend == "postgres" else 1,
        )
        result.create_seconds = time.perf_counter() - t0
        result.created_late_seconds = max(0.0, time.time() - start)
        say(
            f"  created {args.schedules} schedules in {result.create_seconds:.2f}s; window "
            f"opens in {start - time.time():.1f}s"
        )
        calls = await run_window(store, workers, result, args, procs)
        await read_fire_results(store, result, calls)
    except Exception as exc:  # report, don't lose the other back-end's figures
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"  failed: {result.error}")
    finally:
        if procs is not None:
            result.worker_exit_codes += procs.stop()
            result.stderr_sample += procs.stderr()[:20]
        if workers is not None:
            result.worker_exit_codes += workers.stop()
            result.stderr_sample += workers.stderr()[:20]
        await store.close()
        await drop_database(database, args.keep)
        if not args.keep:
            shutil.rmtree(log_dir, ignore_errors=True)
    return result


async def run_window(
    store: Store,
    workers: WorkerProcesses | None,
    result: FireResult,
    args: argparse.Namespace,
    procs: SchedulerProcesses | None = None,
) -> dict[float, tuple[float, float, int]]:
    calls: dict[float, tuple[float, float, int]] = {}
    _instrument(store, calls)
    scheduler = Scheduler(store, poll_seconds=args.poll_seconds or 1.0, fire_ahead=args.fire_ahead)
    jobs = [] if procs else [asyncio.create_task(scheduler.run(), name="scheduler")]

    async def fired() -> int:
        if procs is None:
            return scheduler.fired
        procs.check_alive()
        return int(await scalar(store, "SELECT COUNT(*) FROM tasks"))

    worker: Worker | None = None
    if not args.workers:
        app = importlib.import_module(APP.partition(":")[0]).app
        worker = Worker(
            store,
            app.executors(),
            concurrency=args.concurrency,
            poll_seconds=args.poll_seconds or 1.0,
        )
        jobs.append(asyncio.create_task(worker.run(), name="worker"))
    try:
        await asyncio.sleep(max(0.0, result.window_start - time.time()))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        next_report = result.window_start + 10
        while time.time() < result.window_end:
            _check(jobs, workers)
            await asyncio.sleep(min(1.0, max(0.01, result.window_end - time.time())))
            if time.time() >= next_report:
                say(f"  … {int(time.time() - result.window_start)}s: {await fired()} fired")
                next_report += 10
        result.process_cpu_percent = (
            100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        )
        result.load_average = os.getloadavg()[0]
        # the last slot (window_end - 1) has fired by now unless the scheduler is behind:
        # wait until the scheduler went quiet and no fired task is unfinished
        settle0 = time.perf_counter()
        deadline = time.monotonic() + args.max_wait
        while True:
            _check(jobs, workers)
            fired_before = await fired()
            unfinished = await scalar(
                store,
                "SELECT COUNT(*) FROM tasks WHERE schedule_id IS NOT NULL AND "
                "status NOT IN ('succeeded', 'failed', 'dead', 'cancelled')",
            )
            pending = await scalar(
                store, "SELECT COUNT(*) FROM schedules WHERE next_fire_at IS NOT NULL"
            )
            if not unfinished and not pending and await fired() == fired_before:
                break
            if time.monotonic() > deadline:
                result.timed_out = True
                say(f"  timed out: {unfinished} unfinished tasks, {pending} schedules pending")
                break
            await asyncio.sleep(0.2)
        result.settle_seconds = time.perf_counter() - settle0
    finally:
        scheduler.stop()
        if worker is not None:
            worker.stop()
        await asyncio.gather(*jobs, return_exceptions=True)
    if calls:
        result.fire_calls = Percentiles.of([d for d, _, _ in calls.values()])
        result.tasks_per_fire_call = sum(n for _, _, n in calls.values()) / len(calls)
    return calls


def _check(jobs: list[asyncio.Task[None]], workers: WorkerProcesses | None) -> None:
    for job in jobs:
        if job.done():
            job.result()
            raise RuntimeError(f"{job.get_name()} stopped early")
    if workers is not None:
        workers.check_alive()


async def read_fire_results(
    store: Store, result: FireResult, calls: dict[float, tuple[float, float, int]]
) -> None:
    start, seconds = result.window_start, result.seconds
    ids = [r["id"] for r in await fetch(store, "SELECT id FROM schedules")]
    rows = await fetch(
        store,
        "SELECT t.schedule_id, t.slot, t.created_at, t.status, a.started_at "
        "FROM tasks t LEFT JOIN attempts a ON a.task_id = t.id AND a.attempt = 1 "
        "WHERE t.schedule_id IS NOT NULL",
    )
    slots = {start + k for k in range(seconds)}
    fired: set[tuple[str, float]] = set()
    fire_lags, commit_lags, start_lags = [], [], []
    worst: dict[float, float] = {}
    statuses: dict[str, int] = {}
    for r in rows:
        slot = float(r["slot"])
        if slot not in slots:
            result.outside_window += 1
            continue
        fired.add((r["schedule_id"], slot))
        lag = float(r["created_at"]) - slot
        fire_lags.append(lag)
        worst[slot] = max(worst.get(slot, lag), lag)
        call = calls.get(float(r["created_at"]))
        if call is not None:
            commit_lags.append(call[1] - slot)
        if r["started_at"] is None:
            result.not_started += 1
        else:
            start_lags.append(float(r["started_at"]) - slot)
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    result.expected = len(ids) * seconds
    result.fired = len(rows) - result.outside_window
    missing = sorted((slot, sid) for sid in ids for slot in slots if (sid, slot) not in fired)
    result.missed = len(missing)
    result.missed_sample = [
        f"{sid} @ {datetime.fromtimestamp(slot, UTC):%H:%M:%S}" for slot, sid in missing[:10]
    ]
    dup = await fetch(
        store,
        "SELECT COUNT(*) AS groups, COALESCE(SUM(n - 1), 0) AS extra FROM ("
        "SELECT COUNT(*) AS n FROM tasks WHERE schedule_id IS NOT NULL "
        "GROUP BY schedule_id, slot HAVING COUNT(*) > 1) AS d",
    )
    result.duplicate_groups, result.duplicate_tasks = int(dup[0]["groups"]), int(dup[0]["extra"])
    result.not_succeeded = {s: n for s, n in statuses.items() if s != "succeeded"}
    if result.not_started:
        result.not_succeeded["never started"] = result.not_started
    result.fire_lag = Percentiles.of(fire_lags)
    result.commit_lag = Percentiles.of(commit_lags)
    result.start_lag = Percentiles.of(start_lags)
    result.max_fire_lag_by_slot_ms = [
        round(worst.get(start + k, math.nan) * 1000, 1) for k in range(seconds)
    ]


# -- (b) tick time vs stored schedules ---------------------------------------------------------
LOAD_SQL = """
INSERT INTO schedules (id, name, cron, interval_seconds, timezone, task, start_at, end_at,
    misfire_policy, max_catch_up, misfire_grace_seconds, jitter_seconds, paused,
    next_fire_at, last_fire_at, created_at, updated_at)
SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-'
           || substr(h, 17, 4) || '-' || substr(h, 21, 12),
       'bench-' || lpad(i::text, 8, '0'),
       extract(minute FROM f)::int || ' ' || extract(hour FROM f)::int || ' * * *',
       NULL, 'UTC', $2, NULL, NULL, 'run_once', 10, 60.0, 0.0, 0,
       nf, NULL, $3, $3
FROM generate_series(1, $1::bigint) AS i,
     LATERAL (SELECT $5::double precision + 60 * (60 + (i * 7919) % 1380) AS nf) AS n,
     LATERAL (SELECT lpad(to_hex($4::bigint), 12, '0') || '7' || lpad(to_hex(i), 19, '0')
                  AS h,
                     to_timestamp(nf) AT TIME ZONE 'UTC' AS f) AS x
"""
"""N daily schedules ``M H * * *`` whose next slots are spread over minutes 60..1439 from
the current minute ($5), so none falls due within the next hour."""

WAITING = "('scheduled', 'failed')"  # chronoq.states.WAITING, as the store spells it


async def explain(conn: asyncpg.Connection, now: float, limit: int) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the queries of one scheduler round, rolled back."""
    queries = {
        "schedules.fire_due SELECT (custom plan)": (
            "SELECT * FROM schedules WHERE paused = 0 AND next_fire_at <= $1 "
            "ORDER BY next_fire_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            (now, limit),
        ),
        "promote_due UPDATE": (
            "UPDATE tasks SET status = 'queued', updated_at = $1 WHERE id IN ("
            f"SELECT id FROM tasks WHERE status IN {WAITING} AND run_at <= $1 "
            "ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING queue",
            (now, limit),
        ),
        "next_due_at": (
            "SELECT MIN(t) AS t FROM ("
            f"SELECT MIN(run_at) AS t FROM tasks WHERE status IN {WAITING} UNION ALL "
            "SELECT MIN(next_fire_at) AS t FROM schedules "
            "WHERE paused = 0 AND next_fire_at IS NOT NULL) AS due",
            (),
        ),
    }
    plans: dict[str, str] = {}
    for label, (sql, params) in queries.items():
        tx = conn.transaction()
        await tx.start()
        try:
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
            plans[label] = "\n".join(r[0] for r in rows)
        finally:
            await tx.rollback()
    # what asyncpg's prepared statement may switch to after five executions
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(
            "PREPARE bench_fire(double precision, integer) AS SELECT * FROM schedules "
            "WHERE paused = 0 AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2 "
            "FOR UPDATE SKIP LOCKED"
        )
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_fire({now!r}, {limit})")
        plans["schedules.fire_due SELECT (generic plan)"] = "\n".join(r[0] for r in rows)
    finally:
        await tx.rollback()
        await conn.execute("DEALLOCATE ALL")
    return plans


async def check_rules(conn: asyncpg.Connection, now: float, sample: int = 200) -> str:
    """Loaded rows decode as chronoq records, and next_fire_at is what the rule gives."""
    rows = await conn.fetch("SELECT * FROM schedules TABLESAMPLE SYSTEM (10) LIMIT $1", sample)
    if not rows:
        rows = await conn.fetch("SELECT * FROM schedules LIMIT $1", sample)
    wrong = 0
    for row in rows:
        record = ScheduleRecord.from_row(row)
        if record.first_fire_after(now) != record.next_fire_at:
            wrong += 1
    return f"{len(rows) - wrong}/{len(rows)} sampled rows match their rule"


async def tick(store: Store, batch: int) -> Tick:
    now = time.time()
    t0 = time.perf_counter()
    fired = await store.schedules.fire_due(now, batch)
    t1 = time.perf_counter()
    moved = await store.promote_due(now, batch)
    t2 = time.perf_counter()
    await store.next_due_at()
    t3 = time.perf_counter()
    return Tick((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000, fired, len(moved))


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def scale_one(n: int, args: argparse.Namespace) -> ScaleResult:
    database = make_database("postgres", args.database_url, args.keep)
    result = ScaleResult(n, args.due, database.label)
    say(f"(b) {n:,} stored schedules ({database.label})")
    store = create_store(database.url)
    conn: asyncpg.Connection | None = None
    try:
        await store.open()
        await store.migrate()
        dsn, _ = split_schema(database.url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": database.schema or ""})
        task = TaskTemplate(name=TASK, max_attempts=1).model_dump_json()
        now = time.time()
        minute = math.floor(now / 60) * 60
        await conn.execute("SET session_replication_role = replica")  # skip wake-up trigger
        t0 = time.perf_counter()
        await conn.execute(LOAD_SQL, n, task, now, int(now * 1000), float(minute))
        result.load_seconds = time.perf_counter() - t0
        await conn.execute("RESET session_replication_role")
        result.load_rows_per_second = n / result.load_seconds
        t0 = time.perf_counter()
        await conn.execute("ANALYZE schedules")
        result.analyze_seconds = time.perf_counter() - t0
        say(
            f"  loaded in {result.load_seconds:.2f}s ({result.load_rows_per_second:,.0f} "
            f"rows/s), ANALYZE {result.analyze_seconds:.2f}s"
        )
        result.rule_check = await check_rules(conn, time.time())
        template = TaskTemplate(name=TASK, max_attempts=1)
        for i in range(args.due):
            await store.schedules.create(
                ScheduleCreate(name=f"due-{i:04d}", cron=EVERY_SECOND, task=template), time.time()
            )
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('schedules') AS t, "
            "pg_relation_size('schedules_due') AS i"
        )
        result.table_mib = round(sizes["t"] / 2**20, 1)
        result.due_index_mib = round(sizes["i"] / 2**20, 1)
        busy: list[Tick] = []
        idle: list[Tick] = []
        await tick(store, args.batch)  # fires the slots passed since the due ones were made
        second = math.floor(time.time()) + 1
        for _ in range(args.ticks):
            await sleep_until(second + 0.02)
            busy.append(await tick(store, args.batch))
            await sleep_until(second + 0.5)
            idle.append(await tick(store, args.batch))
            second += 1
        result.busy, result.idle = TickStats.of(busy), TickStats.of(idle)
        result.load_average = os.getloadavg()[0]
        say(
            f"  busy tick {result.busy.brief()} ms (median/p95, {result.busy.fired_per_tick:.0f}"
            f" fired), idle tick {result.idle.brief()} ms"
        )
        result.plans = await explain(conn, time.time() + 1.0, args.batch)  # the due ones due
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"  failed: {result.error}")
    finally:
        if conn is not None:
            await conn.close()
        await store.close()
        await drop_database(database, args.keep)
    return result


def flat_verdict(results: Sequence[ScaleResult], factor: float) -> tuple[bool, str]:
    ok = [r for r in results if r.error is None and r.busy.median_ms is not None]
    if len(ok) < 2:
        return True, "not enough sizes to compare"
    small, large = ok[0], ok[-1]
    notes, flat = [], True
    for label in ("busy", "idle"):
        a, b = getattr(small, label).median_ms, getattr(large, label).median_ms
        ratio = b / a if a else math.inf
        notes.append(f"{label} x{ratio:.2f}")
        flat = flat and ratio <= factor
    verdict = "flat" if flat else "NOT FLAT"
    return flat, (
        f"{verdict}: median at {large.schedules:,} vs {small.schedules:,} "
        f"schedules: {', '.join(notes)} (limit x{factor:g})"
    )


# -- output -------------------------------------------------------------------------------------
def fire_table(results: Sequence[FireResult]) -> str:
    if not results:
        return ""
    first = results[0]
    mode = (
        f"{first.workers} worker processes x {first.concurrency}"
        if first.workers
        else f"in-process worker x {first.concurrency}"
    )
    head = (
        f"(a) {first.schedules:,} schedules x every second for {first.seconds}s "
        f"(cron '{EVERY_SECOND}'; {mode})"
    )
    lines: list[tuple[str, list[str]]] = [
        (
            "window (UTC)",
            [
                f"{datetime.fromtimestamp(r.window_start, UTC):%H:%M:%S}-"
                f"{datetime.fromtimestamp(r.window_end - 1, UTC):%H:%M:%S}"
                for r in results
            ],
        ),
        (
            "schedulers",
            [f"{r.schedulers} processes" if r.schedulers else "in-process" for r in results],
        ),
        ("create schedules s", [f"{r.create_seconds:.2f}" for r in results]),
        ("expected slots", [f"{r.expected:,}" for r in results]),
        ("fired", [f"{r.fired:,}" for r in results]),
        ("missed", [f"{r.missed:,}" for r in results]),
        ("duplicates", [f"{r.duplicate_groups}" for r in results]),
        ("outside window", [f"{r.outside_window}" for r in results]),
        ("fire lag ms p50/95/99/max (< 0: ahead)", [r.fire_lag.brief() for r in results]),
        ("commit lag ms p50/95/99/max", [r.commit_lag.brief() for r in results]),
        ("start lag ms p50/95/99/max", [r.start_lag.brief() for r in results]),
        ("fire call ms p50/95/99/max", [r.fire_calls.brief() for r in results]),
        ("tasks per fire call", [f"{r.tasks_per_fire_call:.0f}" for r in results]),
        ("process CPU % of a core", [f"{r.process_cpu_percent:.0f}" for r in results]),
        ("machine load (1 min avg)", [f"{r.load_average:.2f}" for r in results]),
        ("problems", [r.problems for r in results]),
    ]
    return _grid(head, ["", *(r.backend for r in results)], lines)


def scale_table(results: Sequence[ScaleResult], verdict: str) -> str:
    if not results:
        return ""
    head = (
        f"(b) scheduler round (schedules.fire_due + promote_due + next_due_at) vs stored "
        f"schedules, PostgreSQL, {results[0].due} due every second, "
        f"{results[0].busy.ticks} ticks"
    )
    rows: list[tuple[str, list[str]]] = []
    for r in results:
        if r.error:
            rows.append((f"{r.schedules:,}", [f"error: {r.error}"] + [""] * 7))
            continue
        rows.append(
            (
                f"{r.schedules:,}",
                [
                    f"{r.load_seconds:.2f} ({r.load_rows_per_second / 1000:,.0f}k/s)",
                    f"{r.analyze_seconds:.2f}",
                    f"{r.table_mib:g} / {r.due_index_mib:g}",
                    f"{r.busy.brief()} ({r.busy.fired_per_tick:.0f} fired)",
                    r.busy.parts(),
                    r.idle.brief(),
                    r.idle.parts(),
                    f"{r.load_average:.2f}",
                ],
            )
        )
    table = _grid(
        head,
        [
            "schedules",
            "load s",
            "ANALYZE s",
            "table/index MiB",
            "busy tick ms med/p95",
            "busy fire+promote+next",
            "idle tick ms med/p95",
            "idle fire+promote+next",
            "load avg",
        ],
        rows,
    )
    return f"{table}\n{verdict}\n" + "\n".join(
        f"  {r.schedules:,}: {r.rule_check}" for r in results if r.rule_check
    )


def _grid(head: str, header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    body = [header, *([label, *cells] for label, cells in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    text = [head]
    for n, row in enumerate(body):
        text.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def plans_text(results: Sequence[ScaleResult]) -> str:
    out = []
    for r in results:
        for label, plan in r.plans.items():
            out.append(f"EXPLAIN (ANALYZE, BUFFERS) {label} with {r.schedules:,} schedules:")
            out.append("\n".join(f"    {line}" for line in plan.splitlines()))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    return {
        "chronoq": chronoq.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--part",
        choices=["fire", "scale", "both"],
        default="both",
        help="(a) fire: firing accuracy; (b) scale: tick time vs stored schedules",
    )
    p.add_argument(
        "--backend",
        choices=["sqlite", "postgres", "both"],
        default="both",
        help="back-end(s) for part (a); (b) is PostgreSQL only",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("CHRONOQ_BENCH_POSTGRES", DEFAULT_POSTGRES),
        help="PostgreSQL server and database to create bench_* schemas in "
        "[env CHRONOQ_BENCH_POSTGRES]",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the SQLite files / PostgreSQL schemas and worker logs",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document to stdout")
    a = p.add_argument_group("(a) firing accuracy")
    a.add_argument("--schedules", type=int, default=1000, help="schedules firing every second")
    a.add_argument("--seconds", type=int, default=60, help="length of the window")
    a.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (chronoq worker); 0 = one in-process Worker",
    )
    a.add_argument("--concurrency", type=int, default=64, help="tasks each worker runs at once")
    a.add_argument(
        "--schedulers",
        default="0",
        help="comma-separated numbers of `chronoq scheduler` processes, one run each "
        "(0: one in-process Scheduler)",
    )
    a.add_argument(
        "--poll-seconds",
        type=float,
        default=None,
        help="scheduler/worker poll interval (chronoq's default, 1 s, if unset); "
        "worker processes on SQLite only learn of new tasks by polling",
    )
    a.add_argument(
        "--fire-ahead",
        type=float,
        default=Settings().schedule_fire_ahead,
        help="seconds before its slot a task is inserted (CHRONOQ_SCHEDULE_FIRE_AHEAD; "
        "default chronoq's)",
    )
    a.add_argument(
        "--lead-seconds",
        type=float,
        default=None,
        help="seconds from start-up to the window (default: 2 + time to create)",
    )
    a.add_argument(
        "--in-flight", type=int, default=16, help="concurrent create_schedule calls on PostgreSQL"
    )
    a.add_argument(
        "--max-wait",
        type=float,
        default=120.0,
        help="longest wait for fired tasks to finish after the window",
    )
    b = p.add_argument_group("(b) tick time vs stored schedules")
    b.add_argument(
        "--scale", default="1000,100000,1000000", help="comma-separated numbers of stored schedules"
    )
    b.add_argument("--due", type=int, default=100, help="schedules due every second")
    b.add_argument("--ticks", type=int, default=20, help="timed rounds per size")
    b.add_argument("--batch", type=int, default=1000, help="the scheduler's batch (limit)")
    b.add_argument(
        "--flat-factor",
        type=float,
        default=2.0,
        help="largest/smallest median tick ratio above which it is NOT FLAT",
    )
    b.add_argument(
        "--explain",
        action="store_true",
        help="print EXPLAIN ANALYZE plans even when the tick time is flat",
    )
    args = p.parse_args(argv)
    try:
        args.scale_sizes = sorted(
            {int(x.replace("_", "")) for x in args.scale.split(",") if x.strip()}
        )
    except ValueError:
        p.error(f"--scale must be comma-separated integers, not {args.scale!r}")
    try:
        args.scheduler_counts = [int(x) for x in args.schedulers.split(",") if x.strip()]
    except ValueError:
        p.error(f"--schedulers must be comma-separated integers, not {args.schedulers!r}")
    if args.schedules < 1 or args.seconds < 1:
        p.error("--schedules and --seconds must be at least 1")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"environment": environment(), "fire": [], "scale": []}
    if args.part in ("fire", "both"):
        backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
        for backend in backends:
            for count in args.scheduler_counts:
                out["fire"].append(await fire_backend(backend, args, count))
    if args.part in ("scale", "both"):
        for n in args.scale_sizes:
            out["scale"].append(await scale_one(n, args))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    out = asyncio.run(main_async(args))
    fire: list[FireResult] = out["fire"]
    scale: list[ScaleResult] = out["scale"]
    flat, verdict = flat_verdict(scale, args.flat_factor)
    if args.json:
        doc = {
            "environment": out["environment"],
            "fire": [{**asdict(r), "problems": r.problems} for r in fire],
            "scale": [asdict(r) for r in scale],
            "scale_verdict": verdict if scale else None,
        }
        print(json.dumps(doc, indent=2))
    else:
        env = out["environment"]
        print(
            f"chronoq {env['chronoq']}, Python {env['python']}, {env['cpus']} CPUs, "
            f"{env['platform']}\n"
        )
        if fire:
            print(fire_table(fire) + "\n")
        if scale:
            print(scale_table(scale, verdict) + "\n")
            if args.explain or not flat:
                print(plans_text(scale[-1:] if flat else scale))
    failed = any(r.error for r in fire) or any(r.error for r in scale)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
