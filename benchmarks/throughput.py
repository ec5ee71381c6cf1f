"""Throughput and latency benchmark: N no-op tasks, K worker processes, SQLite and
PostgreSQL, the store broker and the Redis Streams broker.

Run from the repository root (the workers import ``benchmarks.bench_app``)::

    python benchmarks/throughput.py                      # SQLite/store, PostgreSQL/store+redis
    python benchmarks/throughput.py --backend postgres --broker both --workers-list 1,2,4
    python benchmarks/throughput.py --backend postgres -n 50000 -k 4 --concurrency 32
    python benchmarks/throughput.py --backend sqlite --broker redis --json > sqlite.json
    python benchmarks/throughput.py --database-url postgresql://me@db:5432/bench

One *run* is a (back-end, broker, K) combination; ``--backend``, ``--broker`` and
``--workers-list`` (or ``-k``) choose which runs happen, one after another. The default
broker is ``both`` for PostgreSQL and ``store`` for SQLite (``--broker`` applies to every
back-end when given).

``store``
    the default broker: workers claim straight from the store (``FOR UPDATE SKIP LOCKED``),
    woken by PostgreSQL LISTEN/NOTIFY or, on SQLite, by polling.
``redis``
    ``CHRONOQ_BROKER_URL`` (``--broker-url``, default ``redis://127.0.0.1:6379/12``) set for
    every process: workers read "task X is ready" messages from Redis Streams and claim
    those ids. Submission still goes through the store: the submitting App's publisher turns
    its own "queued" events into stream messages. The Redis database is flushed (FLUSHDB)
    before each run, so point ``--broker-url`` at a database nothing else uses: a run
    waits (up to 5 minutes) while other connections to it are active, and reports it
    when the streams were flushed or read by consumers other than its workers meanwhile.

Each run gets a fresh database: SQLite a new file in a temporary directory, PostgreSQL a
new schema ``bench_<random>`` (``?schema=`` URL option) that is dropped at the end
(``--keep`` keeps either for inspection). The run then

1. starts K real worker processes, each ``chronoq worker --app benchmarks.bench_app:app
   --concurrency C --log-level warning`` (run as ``python -m chronoq.cli`` so it uses this
   interpreter), and one ``chronoq scheduler`` with the same environment (with the Redis
   broker its reconciler re-publishes tasks left queued for 5 s; ``--no-scheduler`` skips
   it for store-broker runs), and warms up until every worker has run a task;
2. **loaded phase**: submits N ``bench.noop`` tasks as fast as it can (``--in-flight``
   concurrent ``create_task`` calls on the store of one ``chronoq.App``, as an application
   would; with the Redis broker that App runs the publisher) while the workers drain them,
   and waits until all N are finished (a COUNT query every 100 ms);
3. **backlog phase** (skip with ``--no-backlog``): pauses the workers (SIGSTOP), inserts
   another N tasks in bulk (1,000 per transaction, announced like the scheduler's fired
   tasks, so with the Redis broker they reach the streams too), resumes the workers
   (SIGCONT) and times how fast they empty the queue. The pause lasts the poll interval plus
   0.25 s (so that polling workers do not sleep into the drain) or the insert, if longer;
   the bulk insert keeps it short: a worker frozen for longer than redis-py's 5 s socket
   timeout in the middle of a read loses that read's message until the reconciler
   re-publishes the task, and the reconciler re-publishes every task left queued for 5 s,
   which would both distort the drain figure;
4. **idle phase**: submits ``--idle-tasks`` tasks one at a time, ``--idle-gap-ms`` apart,
   to the otherwise idle system;
5. stops the workers and the scheduler with SIGTERM and reads everything else from the
   database (and, with the Redis broker, the streams' counters).

The figures:

``submit/s``
    N / (time from the first submit call to the return of the last one).
``tasks/s``
    end to end: N / (last ``attempts.finished_at`` - first submit call).
``backlog/s``
    worker capacity on its own: N / (last ``finished_at`` of the backlog - SIGCONT). When
    ``tasks/s`` is close to ``submit/s`` the loaded phase was limited by the submitter,
    and this is the figure that tells what the workers could do.
``loaded p50/p95/p99``
    submit→start latency under load, ``attempts.started_at - tasks.created_at`` for every
    task of the loaded phase. Both are epoch seconds taken with ``time.time()`` on this
    machine (one clock). It includes the time a task waits behind the backlog, so it grows
    with N whenever submitting is faster than draining.
``idle p50/p95/p99``
    the same for the idle phase: the pick-up latency of a lone task, the figure to compare
    with e.g. Celery's ~1 ms. With the store broker on SQLite (no cross-process
    notifications) it is bounded by the workers' poll interval (``CHRONOQ_POLL_SECONDS``,
    1 s unless ``--poll-seconds``).
``RSS``
    the largest peak resident set (``VmHWM`` from ``/proc/<pid>/status``) among the
    workers, in MiB (``--json`` has every worker's).
``problems``
    tasks that did not succeed, processes that exited with a non-zero code, lines they
    wrote to stderr (at ``--log-level warning`` only warnings and errors) and, with the
    Redis broker, stream messages left unacknowledged and signs that something else used
    the broker database.

Below the table, a few lines per run: phase timings, the CPU seconds each side used
during the loaded phase and during the backlog drain (``submit`` this process,
``workers`` all K, ``sched`` the scheduler, ``redis`` the Redis server, ``rest`` the
machine's busy time minus those: the database server, and anything else running on the
machine, so a large ``rest`` on SQLite means the run was disturbed) and, with the Redis
broker, how many stream messages were added for how many tasks (the difference is
re-publishing by the reconciler).

Progress goes to stderr; the table (or, with ``--json``, a JSON document) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

import chronoq
from chronoq.broker.redis import Publisher
from chronoq.config import Settings
from chronoq.models import TaskCreate
from chronoq.store import Store
from chronoq.store.records import INSERT_TASK, NewTask

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/throughput.py` puts benchmarks/ there instead
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    CLOCK_TICKS,
    DEFAULT_POSTGRES,
    ChronoqProcesses,
    Database,
    Percentiles,
    cpu_seconds,
    drop_schema,
    environ_without_chronoq,
    fetch,
    peak_rss_kib,
    postgres_database,
    say,
    sqlite_database,
)

APP = "benchmarks.bench_app:app"
TASK = "bench.noop"
DEFAULT_BROKER = "redis://127.0.0.1:6379/12"
#: how long to wait for other programs to leave the broker database before giving up
BROKER_WAIT = 300.0
#: a connection to the broker database idle this long (seconds) is not "in use"
BROKER_IDLE = 60


# -- results ------------------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    broker: str
    database: str
    broker_url: str | None
    tasks: int
    workers: int
    concurrency: int
    in_flight: int
    poll_seconds: float | None
    scheduler: bool
    submit_seconds: float = 0.0
    submit_rate: float = 0.0
    drain_seconds: float = 0.0
    tasks_per_second: float = 0.0
    tail_seconds: float = 0.0
    backlog_submit_seconds: float = 0.0
    backlog_seconds: float = 0.0
    backlog_tasks_per_second: float = 0.0
    loaded_latency: Percentiles = field(default_factory=Percentiles)
    idle_tasks: int = 0
    idle_gap_ms: float = 0.0
    idle_latency: Percentiles = field(default_factory=Percentiles)
    #: CPU seconds used during the loaded and backlog phases, by side (see the module doc)
    loaded_cpu: dict[str, float] = field(default_factory=dict)
    backlog_cpu: dict[str, float] = field(default_factory=dict)
    #: Redis broker only: tasks created, stream messages added, messages never acknowledged
    tasks_created: int = 0
    stream_messages: int | None = None
    stream_unacked: int | None = None
    broker_interference: list[str] = field(default_factory=list)
    worker_peak_rss_mib: list[float] = field(default_factory=list)
    worker_exit_codes: list[int | None] = field(default_factory=list)
    scheduler_exit_code: int | None = None
    not_succeeded: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    stderr_lines: int = 0
    stderr_sample: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def problems(self) -> str:
        found = []
        if self.error:
            found.append(f"error: {self.error}")
        if self.timed_out:
            found.append("timed out")
        found += [f"{n} {status}" for status, n in self.not_succeeded.items()]
        bad_exits = [c for c in self.worker_exit_codes if c != 0]
        if bad_exits:
            found.append(f"worker exit codes {bad_exits}")
        if self.scheduler and self.scheduler_exit_code not in (0, None):
            found.append(f"scheduler exit code {self.scheduler_exit_code}")
        if self.stream_unacked:
            found.append(f"{self.stream_unacked} unacked messages")
        if self.broker_interference:
            found.append("broker DB used by someone else")
        if self.stderr_lines:
            found.append(f"{self.stderr_lines} stderr lines")
        return ", ".join(found) or "none"


# -- worker processes ---------------------------------------------------------------------------
class Workers(ChronoqProcesses):
    """K ``chronoq worker`` processes (plus an optional ``chronoq scheduler``)."""

    def __init__(
        self,
        url: str,
        count: int,
        concurrency: int,
        *,
        poll_seconds: float | None,
        broker_url: str | None,
        scheduler: bool,
        log_dir: Path,
    ) -> None:
        env = environ_without_chronoq()
        env["CHRONOQ_DATABASE_URL"] = url
        if broker_url:
            env["CHRONOQ_BROKER_URL"] = broker_url
        if poll_seconds is not None:
            env["CHRONOQ_POLL_SECONDS"] = str(poll_seconds)
        super().__init__(env, log_dir)
        self.count, self.concurrency, self.scheduler = count, concurrency, scheduler

    def start(self) -> None:
        for i in range(self.count):
            self.spawn(
                f"worker-{i}", ["worker", "--app", APP, "--concurrency", str(self.concurrency)]
            )
        if self.scheduler:
            self.spawn("scheduler", ["scheduler"])

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.procs[: self.count]

    @property
    def scheduler_proc(self) -> subprocess.Popen[bytes] | None:
        return self.procs[self.count] if self.scheduler and len(self.procs) > self.count else None

    def pause(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGCONT)

    def peak_rss_mib(self) -> list[float]:
        """``VmHWM`` of each live worker, in MiB (read before stopping them)."""
        peaks = [peak_rss_kib(proc.pid) for proc in self.workers]
        return [round(kib / 1024, 1) for kib in peaks if kib is not None]

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds (user + system) used so far by the workers (summed) and the scheduler."""
        workers = sum(cpu_seconds(p.pid, reaped=False) for p in self.workers)
        sched = self.scheduler_proc
        return workers, (cpu_seconds(sched.pid, reaped=False) if sched is not None else 0.0)

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        """SIGTERM everything, wait, SIGKILL what is left; the workers' exit codes."""
        super().stop(timeout)
        return [proc.returncode for proc in self.workers]


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user and nice
    return (sum(ticks) - idle - guest) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds by side between :meth:`start` and :meth:`stop` (see the module doc)."""

    def __init__(self, workers: Workers, redis_client: aioredis.Redis | None) -> None:
        self.workers, self.redis = workers, redis_client
        self._start: dict[str, float] = {}

    async def _sample(self) -> dict[str, float]:
        workers, sched = self.workers.cpu_seconds()
        sample = {
            "submit": time.process_time(),
            "workers": workers,
            "sched": sched,
            "machine": _machine_busy(),
            "wall": time.monotonic(),
        }
        if self.redis is not None:
            info = await self.redis.info("cpu")
            sample["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return sample

    async def start(self) -> None:
        self._start = await self._sample()

    async def stop(self) -> dict[str, float]:
        end = await self._sample()
        used = {k: round(end[k] - self._start[k], 2) for k in end}
        used["rest"] = round(
            used["machine"]
            - sum(used.get(k, 0.0) for k in ("submit", "workers", "sched", "redis")),
            2,
        )
        return used


# -- database helpers ---------------------------------------------------------------------------
async def status_counts(store: Store, since: float) -> dict[str, int]:
    rows = await fetch(
        store,
        "SELECT status, COUNT(*) AS n FROM tasks WHERE created_at >= $1 GROUP BY status",
        since,
    )
    return {r["status"]: int(r["n"]) for r in rows}


async def note_not_succeeded(store: Store, result: Result, since: float, phase: str) -> None:
    """Count the tasks created since ``since`` that did not succeed in ``result``."""
    counts = await status_counts(store, since)
    result.not_succeeded.update({f"{phase} {s}": c for s, c in counts.items() if s != "succeeded"})


async def pending(store: Store) -> int:
    """Tasks not yet finished (cheap: the phases run one after another, so every queued or
    running task belongs to the current phase, and ``tasks_by_status`` answers this)."""
    rows = await fetch(
        store,
        "SELECT COUNT(*) AS n FROM tasks "
        "WHERE status IN ('scheduled', 'queued', 'running', 'failed')",
    )
    return int(rows[0]["n"])


async def wait_finished(store: Store, workers: Workers, expected: int, max_wait: float) -> bool:
    """Poll every 100 ms until no task is waiting or running; False after ``max_wait``."""
    deadline = time.monotonic() + max_wait
    last_report = time.monotonic()
    while True:
        left = await pending(store)
        if left == 0:
            return True
        if time.monotonic() > deadline:
            say(f"  timed out with {left} tasks unfinished")
            return False
        if time.monotonic() - last_report > 5:
            say(f"  ... {expected - left:,}/{expected:,} finished")
            last_report = time.monotonic()
        workers.check_alive()
        await asyncio.sleep(0.1)


async def timings(store: Store, since: float) -> list[Any]:
    """(created, started, finished) of the first attempt of every task created since ``since``."""
    return await fetch(
        store,
        "SELECT t.created_at AS created, a.started_at AS started, a.finished_at AS finished "
        "FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = 1 "
        "WHERE t.created_at >= $1",
        since,
    )


def drain_span(rows: list[Any], start: float) -> tuple[float, float] | None:
    """(seconds from ``start`` to the last completion, tasks finished per second) of
    :func:`timings` rows; None when no task finished."""
    finished = [r["finished"] for r in rows if r["finished"] is not None]
    if not finished:
        return None
    seconds = max(finished) - start
    return seconds, len(finished) / seconds


# -- phases -------------------------------------------------------------------------------------
async def submit_many(store: Store, count: int, in_flight: int) -> None:
    """``count`` submissions through ``in_flight`` concurrent lanes."""
    spec = TaskCreate(name=TASK, max_attempts=1)
    lanes = max(1, min(in_flight, count))

    async def lane(n: int) -> None:
        for _ in range(n):
            await store.create_task(spec, time.time())

    share, extra = divmod(count, lanes)
    await asyncio.gather(*(lane(share + (i < extra)) for i in range(lanes)))


async def bulk_create(store: Store, count: int, chunk: int = 1000) -> None:
    """Insert ``count`` tasks in transactions of ``chunk`` rows and announce them the way
    the scheduler announces the tasks it fires (``Store.inserted``: wake-ups and "queued"
    events, which the Redis broker's publisher turns into stream messages). Much faster
    than one ``create_task`` each, so the backlog phase pauses the workers briefly."""
    spec = TaskCreate(name=TASK, max_attempts=1)
    for start in range(0, count, chunk):
        now = time.time()
        tasks = [NewTask.of(spec, now, now) for _ in range(min(chunk, count - start))]
        async with store.tx() as c:
            await c.executemany(INSERT_TASK, [task.values() for task in tasks])
        store.inserted(tasks)


async def warm_up(store: Store, workers: Workers, batch: int, max_wait: float = 60.0) -> None:
    """Submit small batches until every worker process has run a task, then let them finish."""
    deadline = time.monotonic() + max_wait
    submitted = 0
    while True:
        workers.check_alive()
        await submit_many(store, batch, batch)
        submitted += batch
        await asyncio.sleep(0.2)
        rows = await fetch(store, "SELECT COUNT(DISTINCT worker_id) AS n FROM attempts")
        seen = int(rows[0]["n"])
        if seen >= workers.count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {seen} of {workers.count} workers ran a task in {max_wait:.0f}s"
            )
    if not await wait_finished(store, workers, submitted, max_wait):
        raise RuntimeError("warm-up tasks did not finish")


async def loaded_phase(
    store: Store, workers: Workers, result: Result, max_wait: float, cpu: CpuMeter
) -> None:
    n = result.tasks
    say(f"  loaded: submitting {n} tasks ({result.in_flight} in flight)")
    await cpu.start()
    since = time.time()
    t0 = time.perf_counter()
    await submit_many(store, n, result.in_flight)
    result.submit_seconds = time.perf_counter() - t0
    result.submit_rate = n / result.submit_seconds
    say(
        f"  loaded: submitted in {result.submit_seconds:.2f}s "
        f"({result.submit_rate:,.0f}/s); draining"
    )
    result.timed_out = not await wait_finished(store, workers, n, max_wait)
    result.loaded_cpu = await cpu.stop()
    rows = await timings(store, since)
    if (drained := drain_span(rows, since)) is not None:
        result.drain_seconds, result.tasks_per_second = drained
        result.tail_seconds = max(0.0, result.drain_seconds - result.submit_seconds)
    result.loaded_latency = Percentiles.of([r["started"] - r["created"] for r in rows])
    await note_not_succeeded(store, result, since, "loaded")


def sqlite_write_lock_free(path: Path) -> bool:
    """True unless some process holds the SQLite write lock right now."""
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


async def pause_workers(workers: Workers, sqlite_path: Path | None) -> None:
    """SIGSTOP the workers, making sure none was frozen holding SQLite's write lock."""
    for _ in range(100):
        workers.pause()
        await asyncio.sleep(0.01)
        if sqlite_path is None or sqlite_write_lock_free(sqlite_path):
            return
        workers.resume()
        await asyncio.sleep(0.05)
    raise RuntimeError("could not pause the workers outside a write transaction")


async def backlog_phase(
    store: Store,
    workers: Workers,
    result: Result,
    max_wait: float,
    sqlite_path: Path | None,
    cpu: CpuMeter,
    publisher: Publisher | None,
    poll_seconds: float,
) -> None:
    n = result.tasks
    say(f"  backlog: pausing the workers, submitting {n} tasks")
    await pause_workers(workers, sqlite_path)
    since = time.time()
    try:
        published = publisher.published if publisher is not None else 0
        await bulk_create(store, n)
        deadline = time.monotonic() + 30
        while (  # noqa: ASYNC110
            publisher is not None
            and publisher.published < published + n
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)  # the publisher is putting them on the streams
        # paused longer than the workers' poll interval: a worker that found no work before
        # the pause must not sleep into the drain (SQLite has no cross-process wake-ups)
        await asyncio.sleep(max(0.0, since + poll_seconds + 0.25 - time.time()))
    finally:
        resumed = time.time()
        await cpu.start()
        workers.resume()
    result.backlog_submit_seconds = resumed - since
    say("  backlog: workers resumed; draining")
    if not await wait_finished(store, workers, n, max_wait):
        result.timed_out = True
    result.backlog_cpu = await cpu.stop()
    if (drained := drain_span(await timings(store, since), resumed)) is not None:
        result.backlog_seconds, result.backlog_tasks_per_second = drained
    await note_not_succeeded(store, result, since, "backlog")


async def idle_phase(store: Store, workers: Workers, result: Result, max_wait: float) -> None:
    n, gap = result.idle_tasks, result.idle_gap_ms / 1000.0
    if n <= 0:
        return
    say(f"  idle: submitting {n} tasks one at a time, {result.idle_gap_ms:g} ms apart")
    await asyncio.sleep(0.5)  # let the workers go back to waiting
    since = time.time()
    spec = TaskCreate(name=TASK, max_attempts=1)
    for _ in range(n):
        await store.create_task(spec, time.time())
        await asyncio.sleep(gap)
    if not await wait_finished(store, workers, n, max_wait):
        result.timed_out = True
    rows = await timings(store, since)
    result.idle_latency = Percentiles.of([r["started"] - r["created"] for r in rows])
    await note_not_succeeded(store, result, since, "idle")


# -- one run ------------------------------------------------------------------------------------
def make_database(backend: str, override: str | None, tmp: Path) -> Database:
    if backend == "sqlite":
        if override and override.startswith("sqlite://"):
            path = Path(override.removeprefix("sqlite://").removeprefix("/"))
            if path.exists():
                raise SystemExit(f"{path} exists; the benchmark needs a fresh database")
            return sqlite_database(path, override)
        return sqlite_database(tmp / "bench.db")
    base = override if override and override.startswith("postgres") else DEFAULT_POSTGRES
    return postgres_database(base)


def worker_poll_seconds(args: argparse.Namespace) -> float:
    """The workers' poll interval: ``--poll-seconds`` or chronoq's default (the workers get
    no CHRONOQ_* variable from the caller's environment)."""
    default: float = Settings.model_fields["poll_seconds"].default
    return float(args.poll_seconds) if args.poll_seconds is not None else default


def submitter_app(url: str, broker_url: str | None) -> chronoq.App:
    """The submitting application: a ``chronoq.App`` on the run's database; with the Redis
    broker its publisher turns this process's "queued" events into stream messages. Every
    setting that matters is explicit, so no CHRONOQ_* variable of the caller changes it."""
    settings = Settings(
        database_url=url, broker_url=broker_url, redis_url=None, app=None, log_level="warning"
    )
    return chronoq.App(settings=settings)


def remove_files(database: Database) -> None:
    if database.path:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{database.path}{suffix}").unlink(missing_ok=True)


async def stream_counters(client: aioredis.Redis, pids: set[int]) -> tuple[int, int, set[str]]:
    """(messages ever added, messages delivered but never acknowledged, consumers that are
    not our workers) over chronoq's streams in the broker database. Consumer names are
    worker ids, ``host:pid:random``."""
    added = unacked = 0
    foreign: set[str] = set()
    async for key in client.scan_iter(match="chronoq:q:*", _type="stream"):
        info = await client.xinfo_stream(key)
        added += int(info.get("entries-added", info.get("length", 0)))
        for group in await client.xinfo_groups(key):
            unacked += int(group.get("pending", 0))
            for consumer in await client.xinfo_consumers(key, group["name"]):
                parts = str(consumer["name"]).split(":")
                if len(parts) < 3 or not parts[-2].isdigit() or int(parts[-2]) not in pids:
                    foreign.add(str(consumer["name"]))
    return added, unacked, foreign


async def broker_db_others(client: aioredis.Redis) -> list[str]:
    """Other connections to the broker database that sent a command in the last minute:
    another program using it (the benchmark flushes it before each run, so sharing it
    would corrupt both). Connections idle for longer are taken as left behind."""
    me = int(await client.client_id())
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    return [
        f"{c.get('addr')} (last command {c.get('cmd')}, {c.get('idle')} s ago)"
        for c in await client.client_list()
        if int(c.get("db", -1)) == db
        and int(c.get("id", -1)) != me
        and int(c.get("idle", 0)) < BROKER_IDLE
    ]


async def wait_broker_db_free(client: aioredis.Redis, url: str, max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while others := await broker_db_others(client):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(others)} other connections use {url} (e.g. {others[0]}) and it is "
                "flushed before each run: choose a free database with --broker-url"
            )
        say(f"  waiting for {len(others)} other connections to leave {url}: {others[0]}")
        await asyncio.sleep(5)


async def close_app(app: chronoq.App, timeout: float = 10.0) -> None:
    """``app.close()``, bounded: an interrupted run must still stop its workers and drop
    its database even if closing hangs (redis-py 8.1 loses some cancellations of in-flight
    commands, which made ``Publisher.close`` wait forever before it stopped on a
    sentinel)."""
    started = time.monotonic()
    await asyncio.wait_for(app.close(), timeout)
    if time.monotonic() - started >= timeout:
        say(f"  closing the submitting App took {timeout:.0f}s (publisher did not stop)")


async def run_one(backend: str, broker: str, count: int, args: argparse.Namespace) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix=f"chronoq-bench-{backend}-{broker}-"))
    database = make_database(backend, args.database_url, tmp)
    broker_url = args.broker_url if broker == "redis" else None
    scheduler = args.scheduler or broker == "redis"
    result = Result(
        backend=backend,
        broker=broker,
        database=database.label,
        broker_url=broker_url,
        tasks=args.tasks,
        workers=count,
        concurrency=args.concurrency,
        in_flight=args.in_flight,
        poll_seconds=args.poll_seconds,
        scheduler=scheduler,
        idle_tasks=args.idle_tasks,
        idle_gap_ms=args.idle_gap_ms,
    )
    say(
        f"[{backend} / {broker} / K={count}] {database.label}"
        + (f", broker {broker_url}" if broker_url else "")
    )
    redis_client = aioredis.from_url(broker_url, decode_responses=True) if broker_url else None
    app = submitter_app(database.url, broker_url)
    workers = Workers(
        database.url,
        count,
        args.concurrency,
        poll_seconds=args.poll_seconds,
        broker_url=broker_url,
        scheduler=scheduler,
        log_dir=tmp,
    )
    cpu = CpuMeter(workers, redis_client)
    try:
        if redis_client is not None and broker_url:
            await wait_broker_db_free(redis_client, broker_url, BROKER_WAIT)
            await redis_client.flushdb()
        await app.open()  # creates the schema and applies the migrations
        store = app.store
        workers.start()
        say(
            f"  started {count} workers x {args.concurrency}"
            + (" and a scheduler" if scheduler else "")
            + "; warming up"
        )
        await warm_up(store, workers, count * args.concurrency)
        await loaded_phase(store, workers, result, args.timeout, cpu)
        if args.backlog:
            sqlite_path = database.path if backend == "sqlite" else None
            await backlog_phase(
                store,
                workers,
                result,
                args.timeout,
                sqlite_path,
                cpu,
                app.publisher,
                worker_poll_seconds(args),
            )
        await idle_phase(store, workers, result, args.timeout)
        rows = await fetch(store, "SELECT COUNT(*) AS n FROM tasks")
        result.tasks_created = int(rows[0]["n"])
        if redis_client is not None:
            pids = {proc.pid for proc in workers.workers}
            result.stream_messages, result.stream_unacked, foreign = await stream_counters(
                redis_client, pids
            )
            if foreign:
                result.broker_interference.append(
                    f"consumers that are not this run's workers read the streams: "
                    f"{sorted(foreign)[:3]}"
                )
            if result.stream_messages < result.tasks_created:
                result.broker_interference.append(
                    f"{result.tasks_created - result.stream_messages} fewer stream messages "
                    "than tasks: the broker database was flushed (or lost) during the run"
                )
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"  FAILED: {result.error}")
    finally:
        result.worker_peak_rss_mib = workers.peak_rss_mib()
        result.worker_exit_codes = workers.stop()
        sched = workers.scheduler_proc
        result.scheduler_exit_code = sched.returncode if sched is not None else None
        lines = workers.stderr()
        result.stderr_lines = len(lines)
        result.stderr_sample = _sample(lines, 12)
        await close_app(app)
        if redis_client is not None:
            await redis_client.aclose()
        if args.keep:
            say(f"  kept {database.label}; worker logs in {tmp}")
        else:
            if database.schema:
                await drop_schema(database.url, database.schema)
            remove_files(database)
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _readable(line: str) -> str:
    """A worker's log line in one short line: chronoq logs JSON when stderr is not a
    terminal; keep time, level, logger, message and the exception's last line."""
    label, _, text = line.partition(": ")
    try:
        entry = json.loads(text)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "message" not in entry:
        return line
    brief = (
        f"{label}: {str(entry.get('timestamp', ''))[11:23]} {entry.get('level', '')} "
        f"{entry.get('logger', '')}: {entry['message']}"
    )
    exception = str(entry.get("exception") or "").strip().splitlines()
    return f"{brief} [{exception[-1]}]" if exception else brief


def _sample(lines: list[str], limit: int) -> list[str]:
    """The first ``limit`` distinct lines (ignoring timestamps)."""
    seen: dict[str, str] = {}
    for line in map(_readable, lines):
        parts = line.split(" ", 3)
        key = parts[0] + parts[-1] if len(parts) == 4 else line
        seen.setdefault(key[:160], line[:400])
        if len(seen) >= limit:
            break
    return list(seen.values())


# -- output -------------------------------------------------------------------------------------
def _cpu_brief(used: dict[str, float]) -> str:
    if not used:
        return "-"
    keys = ["submit", "workers", "sched", *(["redis"] if "redis" in used else []), "rest"]
    return " ".join(f"{k} {used[k]:.1f}" for k in keys) + f" s in {used['wall']:.1f} s"


def table(results: list[Result]) -> str:
    if not results:
        return "no run finished"
    headers = [
        "backend",
        "broker",
        "K x C",
        "N",
        "submit/s",
        "tasks/s",
        "backlog/s",
        "loaded p50/p95/p99 ms",
        "idle p50/p95/p99 ms",
        "RSS MiB",
        "problems",
    ]
    right = {3, 4, 5, 6, 9}
    ordered = sorted(results, key=lambda r: (r.backend != "sqlite", r.broker != "store", r.workers))
    rows = [
        [
            r.backend,
            r.broker,
            f"{r.workers} x {r.concurrency}",
            f"{r.tasks:,}",
            f"{r.submit_rate:,.0f}",
            f"{r.tasks_per_second:,.0f}",
            f"{r.backlog_tasks_per_second:,.0f}" if r.backlog_seconds else "-",
            r.loaded_latency.brief(maximum=False),
            r.idle_latency.brief(maximum=False),
            f"{max(r.worker_peak_rss_mib):.0f}" if r.worker_peak_rss_mib else "-",
            r.problems,
        ]
        for r in ordered
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)]
    previous = None
    for r, cells in zip(ordered, rows, strict=True):
        group = (r.backend, r.broker)
        if previous is not None and group != previous:
            lines.append("")  # a blank line between (back-end, broker) groups
        if group == previous:
            cells = ["", "", *cells[2:]]
        lines.append(line(cells))
        previous = group
    notes = [
        "CPU seconds used during the loaded phase and the backlog drain (submit = this "
        "process, rest = the database server and anything else on the machine):"
    ]
    for r in ordered:
        label = f"{r.backend}/{r.broker}/K={r.workers}"
        notes.append(
            f"{label}: submit {r.submit_seconds:.2f}s, last completion "
            f"{r.tail_seconds:.2f}s after the last submit; backlog submitted in "
            f"{r.backlog_submit_seconds:.2f}s, drained in {r.backlog_seconds:.2f}s; "
            f"idle: {r.idle_latency.count} tasks {r.idle_gap_ms:g} ms apart"
        )
        notes.append(
            f"  CPU, loaded: {_cpu_brief(r.loaded_cpu)}; backlog drain: {_cpu_brief(r.backlog_cpu)}"
        )
        if r.stream_messages is not None:
            notes.append(
                f"  streams: {r.stream_messages:,} messages for {r.tasks_created:,} "
                f"tasks ({r.stream_messages - r.tasks_created:+,} re-published), "
                f"{r.stream_unacked} unacknowledged"
            )
        notes += [f"  {line}" for line in [*r.broker_interference, *r.stderr_sample]]
    return "\n".join([*lines, "", *notes])


def environment() -> dict[str, Any]:
    return {
        "chronoq": chronoq.__version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def _workers_list(value: str) -> list[int]:
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected e.g. 1,2,4") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected positive counts, e.g. 1,2,4")
    return counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Submit N no-op tasks, drain them with K worker processes, and report "
        "tasks/s and submit→start latency for SQLite and PostgreSQL, with the "
        "store broker and the Redis Streams broker."
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--broker",
        choices=["store", "redis", "both"],
        default=None,
        help="how workers get ready tasks (default: both for PostgreSQL, "
        "store for SQLite; when given, for every back-end)",
    )
    parser.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER,
        help="Redis database for the Redis broker, FLUSHED before each run "
        f"(default {DEFAULT_BROKER})",
    )
    parser.add_argument(
        "-n", "--tasks", type=int, default=10_000, help="tasks in the loaded phase (default 10000)"
    )
    parser.add_argument(
        "-k", "--workers", type=int, default=None, help="worker processes (default 2)"
    )
    parser.add_argument(
        "--workers-list",
        type=_workers_list,
        default=None,
        metavar="K,K,...",
        help="one run per worker count, e.g. 1,2,4 (instead of -k)",
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=16,
        help="tasks each worker runs at once (default 16)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=32,
        help="concurrent submissions in the loaded phase (default 32)",
    )
    parser.add_argument(
        "--no-backlog",
        dest="backlog",
        action="store_false",
        help="skip the backlog phase (pause workers, submit N, resume)",
    )
    parser.add_argument(
        "--idle-tasks",
        type=int,
        default=200,
        help="tasks in the idle-latency phase; 0 skips it (default 200)",
    )
    parser.add_argument(
        "--idle-gap-ms",
        type=float,
        default=10.0,
        help="pause between idle-phase submissions (default 10)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=None,
        help="CHRONOQ_POLL_SECONDS for the workers (default: chronoq's, 1 s)",
    )
    parser.add_argument(
        "--database-url",
        help="postgresql://… server and database to create the bench schema "
        f"in (default {DEFAULT_POSTGRES}), or sqlite:///new-file.db",
    )
    parser.add_argument(
        "--no-scheduler",
        dest="scheduler",
        action="store_false",
        help="run no `chronoq scheduler` in store-broker runs (every task is "
        "due at once; Redis-broker runs always have one, for the "
        "reconciler)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="give up waiting for a phase to finish after this many seconds",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database/schema and worker logs"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers_list is not None:
        parser.error("give -k/--workers or --workers-list, not both")
    args.workers_list = args.workers_list or [args.workers or 2]
    if (
        args.tasks < 1
        or args.concurrency < 1
        or args.in_flight < 1
        or (args.workers is not None and args.workers < 1)
    ):
        parser.error("--tasks, --workers, --concurrency and --in-flight must be positive")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(back-end, broker, K) of every run, in the order they run: for each back-end the
    worker counts in turn, both brokers for each, so slow drift of the machine hits both."""
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    runs = []
    for backend in backends:
        choice = args.broker or ("both" if backend == "postgres" else "store")
        brokers = ["store", "redis"] if choice == "both" else [choice]
        runs += [(backend, broker, k) for k in args.workers_list for broker in brokers]
    return runs


async def main_async(args: argparse.Namespace) -> list[Result]:
    # SIGTERM/SIGINT cancel the run in progress, whose cleanup then stops its worker
    # processes and drops its database (even when started in the background, where the
    # shell makes SIGINT ignored)
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    results: list[Result] = []
    try:
        for backend, broker, k in plan(args):
            results.append(await run_one(backend, broker, k, args))
    except asyncio.CancelledError:
        say("interrupted: reporting the runs that finished")
        args.interrupted = True
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    if args.json:
        doc = {
            "environment": environment(),
            "command": sys.argv,
            "results": [{**asdict(r), "problems": r.problems} for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        env = environment()
        print(
            f"chronoq {env['chronoq']}, Python {env['python']}, SQLite {env['sqlite']}, "
            f"{env['cpus']} CPUs\n"
        )
        print(table(results), flush=True)
    if getattr(args, "interrupted", False):
        return 130
    return 1 if any(r.error or r.timed_out for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
