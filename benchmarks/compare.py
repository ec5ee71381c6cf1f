"""chronoq side by side with Celery and RQ: the same workloads, same machine, same run.

Run from the repository root (every worker imports a module of ``benchmarks/``)::

    pip install -e '.[bench]'                  # pinned Celery, RQ, redis-py
    python benchmarks/compare.py               # everything, table on stdout
    python benchmarks/compare.py --json > compare.json
    python benchmarks/compare.py --systems chronoq-pg,celery -n 2000 --workers 4

Systems (``--systems``, default all): ``chronoq-pg`` (PostgreSQL store, the default
broker), ``chronoq-redis`` (PostgreSQL store + Redis Streams broker,
``CHRONOQ_BROKER_URL``), ``celery-fast`` (Celery's fastest honest setup, the main Celery
row: no result backend, ``ignore_result``, prefork, prefetch multiplier 64; each handler
writes its end to a Redis hash, which is how the benchmark sees it finish), ``celery``
(Celery as it ran before: Redis broker and result backend, prefetch 4), ``rq`` (the default
forking ``Worker``) and ``rq-simple`` (``SimpleWorker``, no fork per job). Each one, in
turn: flush its Redis databases (and create a fresh PostgreSQL schema for chronoq), start
its worker processes, warm them up until every process has run a task, then

1. **throughput**: enqueue N no-op tasks from this process while the workers run
   (``enqueue/s``; ``end-to-end/s`` = N / (last completion - first enqueue)); then N/5
   more with one call at a time (chronoq's client too: ``one at a time`` rows); then pause
   the workers (SIGSTOP), enqueue N more, resume them and time the backlog (``drain/s`` =
   N / (last completion - resume)), with the CPU the workers and the servers spent on it;
   1c. **cold drain** (``--no-cold-drain`` skips it): with every worker process stopped,
   enqueue N more, start the workers and time from their spawn to the last completion
   (start-up included), with the PostgreSQL + Redis server CPU per task (``/proc/<pid>/stat``
   utime + stime of every ``postgres`` and ``redis-server`` process, before and after);
2. **latency**: ``--latency-tasks`` tasks submitted one by one at ``--latency-rate``/s to
   the idle system; each handler writes ``time.time()`` to Redis as it starts, the client
   takes ``time.time()`` right before each submit call (one clock): submit->start p50/p99;
3. **I/O-bound**: restart the workers for concurrency ``--io-concurrency`` (when the
   system can), enqueue ``--io-tasks`` tasks that sleep ``--io-sleep-ms`` and report the
   wall time (first enqueue -> last completion) and tasks/s;

then stop its processes and flush its data. ``--repeat R`` does all that R times, the
systems taking turns in each round, and prints the median of every figure (machines are
noisy; the per-run end-to-end and latency figures are listed under the table).

The enqueuing is each system's idiomatic way from one client process: chronoq
``await noop.adelay()`` through an ``App`` with ``--in-flight`` concurrent calls (the
store writes calls that overlap together: one INSERT and one commit for all of them),
Celery ``noop.delay()``, RQ ``Queue.enqueue(noop)``; Celery's and RQ's clients are
synchronous, one call at a time.
Completion times are the ones each system records: chronoq ``attempts.finished_at``,
Celery's ``date_done`` in the result backend, RQ's job ``ended_at``.

Layouts, K = ``--workers`` processes:

* chronoq: K ``python -m chronoq.cli worker --app benchmarks.chronoq_app:app
  --concurrency C --log-level warning`` (C = ``--concurrency`` for phases 1-2,
  ``--io-concurrency``/K for phase 3; async handlers) plus one ``chronoq scheduler``;
* Celery: one ``celery worker -P prefork -c K`` for phases 1-2 (K child processes run
  tasks, the parent reads the broker); K ``celery worker -P threads -c
  io-concurrency/K`` for phase 3, since K prefork processes can only run K tasks at once;
  ``--without-gossip --without-mingle --without-heartbeat``, otherwise Celery's defaults
  (early acks, prefetch multiplier 4; ``celery-fast``: 64, no result backend);
* RQ: K ``rq worker`` processes throughout. An RQ worker runs one job at a time, so
  phase 3 runs K sleeps at once whatever ``--io-concurrency`` says; the table reports what
  K processes achieve. ``--rq-io-processes P`` adds a phase-3 run with P SimpleWorker
  processes (``rq worker-pool``), what RQ needs for that concurrency.

Redis databases (``--redis``): 7 chronoq's Redis Streams broker, 8 Celery's broker, 9 RQ,
10 Celery's results, 11 the handlers' start stamps. They are flushed before and after
each system's turn: do not point this at databases holding anything you want to keep.
Progress goes to stderr; the table (or ``--json``) to stdout. ``--profile DIR`` runs the
enqueuing client under pyinstrument and samples a chronoq worker with py-spy during the
backlog drain of phase 1 (slower: use a separate run for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/compare.py` puts benchmarks/ there instead
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    DEFAULT_POSTGRES,
    Percentiles,
    cpu_seconds,
    drop_schema,
    environ_without_chronoq,
    peak_rss_kib,
    proc_stat,
    say,
    tail,
)

DEFAULT_REDIS = "redis://127.0.0.1:6379"
SYSTEMS = ("chronoq-pg", "chronoq-redis", "celery-fast", "celery", "rq", "rq-simple")
LABELS = {
    "chronoq-pg": "chronoq pg",
    "chronoq-redis": "chronoq pg+redis",
    "celery-fast": "celery fast",
    "celery": "celery results",
    "rq": "rq",
    "rq-simple": "rq simple",
}
#: what each Celery row is (printed under the table)
CELERY_SETUPS = {
    "celery-fast": "Celery's fastest honest setup (the main row): no result backend "
    "(ignore_result), prefork, prefetch multiplier 64; each handler writes its end to a "
    "Redis hash so the benchmark sees it",
    "celery": "Celery as before: Redis result backend (date_done), prefork, prefetch "
    "multiplier 4 (the default)",
}
DB = {"chronoq": 7, "celery": 8, "rq": 9, "celery-results": 10, "stamps": 11}


class BenchError(RuntimeError):
    """A system could not run a phase (failed to start, timed out, lost tasks)."""


# -- results ------------------------------------------------------------------------------------
@dataclass
class Result:
    system: str
    layout: str = ""
    io_layout: str = ""
    processes: int = 0
    tasks: int = 0
    enqueue_seconds: float | None = None
    enqueue_per_second: float | None = None
    end_to_end_seconds: float | None = None
    end_to_end_per_second: float | None = None
    backlog_enqueue_per_second: float | None = None
    serial_enqueue_per_second: float | None = None
    serial_end_to_end_per_second: float | None = None
    drain_seconds: float | None = None
    drain_per_second: float | None = None
    #: N queued before any worker process exists: spawn -> last completion
    cold_drain_seconds: float | None = None
    cold_drain_per_second: float | None = None
    cold_server_cpu_ms_per_task: float | None = None
    worker_cpu_ms_per_task: float | None = None
    server_cpu_ms_per_task: float | None = None
    latency: Percentiles = field(default_factory=Percentiles)
    #: submit->start of every latency task of every run together (of a median result)
    latency_pooled: Percentiles = field(default_factory=Percentiles)
    #: the latency phase's submit->start durations, seconds (not written to JSON)
    latency_samples: list[float] = field(default_factory=list)
    io_tasks: int = 0
    io_wall_seconds: float | None = None
    io_per_second: float | None = None
    io_extra: dict[str, Any] = field(default_factory=dict)
    worker_peak_rss_mib: float | None = None
    failed_tasks: int = 0
    #: 1-minute load average when the system's turn started and ended (others' load skews)
    load_average: list[float] = field(default_factory=list)
    #: share of the machine's CPU busy (with others' work) just before the system's turn
    cpu_busy_before: float = 0.0
    errors: list[str] = field(default_factory=list)
    stderr_sample: list[str] = field(default_factory=list)


# -- processes ----------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found, depth first)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


#: the postmaster of the benchmark's PostgreSQL server (:func:`preflight`; None: unknown,
#: then every ``postgres`` process on the machine counts)
POSTMASTER: int | None = None


def server_pids() -> list[int]:
    """The benchmark's PostgreSQL server (its postmaster and every backend: another
    cluster on the machine is left out) and the Redis server processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == "redis-server" or (comm == "postgres" and POSTMASTER is None):
                pids.append(int(entry.name))
    if POSTMASTER is not None:
        pids += [POSTMASTER, *descendants(POSTMASTER)]
    return pids


class ServerCpu:
    """CPU seconds the servers spend from now until :meth:`spent`: the processes alive at
    either end (a backend that starts meanwhile counts whole; one that exits meanwhile
    lands in its postmaster's reaped-children time, which is counted)."""

    def __init__(self) -> None:
        self.before = self._sample()

    @staticmethod
    def _sample() -> dict[int, float]:
        return {pid: cpu_seconds(pid, reaped=pid == POSTMASTER) for pid in server_pids()}

    def spent(self) -> float:
        after = self._sample()
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items())


def cpu_busy(window: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``window`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait until the machine is less than ``limit`` busy for 3 s in a row (other people's
    tests and benchmarks skew every figure), at most ``max_wait`` s; the last reading."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    busy = cpu_busy()
    while time.monotonic() < deadline:
        quiet = quiet + 1 if busy < limit else 0
        if quiet >= 3:
            break
        busy = cpu_busy()
    else:
        say(f"  machine still {busy:.0%} busy after {max_wait:.0f}s of waiting; going on")
    return busy


def system_env(stamps_url: str) -> dict[str, str]:
    """The environment of a measured system's processes: none of the caller's chronoq
    settings, the repository importable, and where handlers stamp their start and end."""
    return {**environ_without_chronoq(), "PYTHONPATH": str(REPO), "BENCH_STAMPS_URL": stamps_url}


class Processes:
    """Subprocesses of one system, with their stderr in log files."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir, self.env = log_dir, env
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path, bool]] = []
        self._files: list[IO[bytes]] = []

    def spawn(self, label: str, argv: list[str], *, worker: bool = True) -> None:
        log = self.log_dir / f"{label}.log"
        handle = log.open("ab")
        self._files.append(handle)
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((label, proc, log, worker))

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for _, p, _, w in self.procs if w]

    def check_alive(self) -> None:
        for label, proc, log, _ in self.procs:
            code = proc.poll()
            if code is not None:
                raise BenchError(
                    f"{label} (pid {proc.pid}) exited with code {code}:\n" + tail(log, 15)
                )

    def pause(self) -> None:
        for proc in self.workers:
            os.kill(proc.pid, signal.SIGSTOP)
            for child in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.workers:
            for child in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)

    def cpu(self) -> float:
        """CPU seconds of the worker processes and their children so far."""
        total = 0.0
        for proc in self.workers:
            total += cpu_seconds(proc.pid)
            total += sum(cpu_seconds(c, reaped=False) for c in descendants(proc.pid))
        return total

    def peak_rss_mib(self) -> float:
        """Sum of ``VmHWM`` over the worker processes and their live children."""
        total = sum(
            peak_rss_kib(pid) or 0
            for proc in self.workers
            for pid in [proc.pid, *descendants(proc.pid)]
        )
        return round(total / 1024, 1)

    def count(self) -> int:
        return sum(1 + len(descendants(p.pid)) for p in self.workers)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """SIGCONT+SIGTERM everything, wait, SIGKILL the process group of what is left;
        returns the problems seen (non-zero exits, kills)."""
        problems = []
        running = []
        for label, proc, _, _ in self.procs:
            if proc.poll() is None:
                running.append((label, proc))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
            elif proc.returncode != 0:
                problems.append(f"{label} had exited with code {proc.returncode}")
        deadline = time.monotonic() + timeout
        for label, proc in running:
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"{label} ignored SIGTERM for {timeout:.0f}s: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                continue
            if code not in (0, -signal.SIGTERM):
                problems.append(f"{label} exited with code {code}")
        for _, proc, _, _ in self.procs:
            with contextlib.suppress(ProcessLookupError):  # orphans (prefork children...)
                os.killpg(proc.pid, signal.SIGKILL)
        for handle in self._files:
            handle.close()
        self.procs.clear()
        self._files.clear()
        return problems

    def log_lines(self) -> list[str]:
        lines = []
        for log in sorted(self.log_dir.glob("*.log")):
            lines += [
                f"{log.stem}: {line}"
                for line in log.read_text(errors="replace").splitlines()
                if line.strip()
            ]
        return lines


def epoch(text: str | bytes | None) -> float | None:
    """An ISO 8601 time (Celery's ``date_done``, RQ's ``ended_at``) as epoch seconds."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode()
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


# -- systems ------------------------------------------------------------------------------------
class System:
    """One system under test: start/stop its workers, enqueue, read outcomes."""

    name = ""
    #: Redis databases this system writes (flushed before and after its turn)
    databases: tuple[int, ...] = ()

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.k = args.workers
        self.log_dir = log_dir
        self.env = system_env(args.stamps_url)
        self.procs = Processes(log_dir, self.env)

    # lifecycle
    async def setup(self) -> None: ...
    async def teardown(self) -> None: ...
    def start(self, mode: str) -> str:
        """Start the workers for ``mode`` (``noop`` or ``io``); returns a layout summary."""
        raise NotImplementedError

    # work
    async def enqueue(self, what: str, n: int, one_at_a_time: bool = False) -> list[str]:
        """Enqueue ``n`` tasks ``what`` (noop, sleep, whoami) as fast as the client can
        (Celery's and RQ's clients always send one task at a time)."""
        raise NotImplementedError

    async def submit_stamp(self, key: str, token: str) -> None:
        raise NotImplementedError

    async def done_count(self) -> int:
        """Tasks with a recorded outcome (cheap; compared with a baseline)."""
        raise NotImplementedError

    async def outcomes(self, ids: list[str]) -> list[tuple[float | None, bool, str | None]]:
        """(finished at, succeeded, executor) of each task."""
        raise NotImplementedError


class Chronoq(System):
    def __init__(self, args: argparse.Namespace, log_dir: Path, broker: bool) -> None:
        super().__init__(args, log_dir)
        self.name = "chronoq-redis" if broker else "chronoq-pg"
        self.broker_url = f"{args.redis}/{DB['chronoq']}" if broker else None
        self.databases = (DB["chronoq"],) if broker else ()
        self.schema = f"bench_cmp_{uuid.uuid4().hex[:10]}"
        sep = "&" if "?" in args.database_url else "?"
        self.url = f"{args.database_url}{sep}schema={self.schema}"
        self.env["CHRONOQ_DATABASE_URL"] = self.url
        if self.broker_url:
            self.env["CHRONOQ_BROKER_URL"] = self.broker_url
        self.conn: Any = None
        self.client_profile: Any = None

    async def setup(self) -> None:
        import asyncpg

        from benchmarks import chronoq_app
        from chronoq.config import Settings
        from chronoq.store.postgres import split_schema

        os.environ["BENCH_STAMPS_URL"] = self.args.stamps_url
        self.mod = chronoq_app
        self.app = chronoq_app.app
        self.app.settings = Settings().model_copy(
            update={"database_url": self.url, "broker_url": self.broker_url, "redis_url": None}
        )
        await self.app.open()  # creates the schema and applies the migrations
        dsn, _ = split_schema(self.url)
        self.conn = await asyncpg.connect(dsn, server_settings={"search_path": self.schema})

    async def teardown(self) -> None:
        if self.app.is_open:
            try:  # see the README: Publisher.close() can hang after a burst of submits
                await asyncio.wait_for(self.app.close(), 15)
            except TimeoutError:
                say("    (App.close() did not return within 15 s)")
        if self.conn is not None:
            await self.conn.close()
        await drop_schema(self.url, self.schema)

    def start(self, mode: str) -> str:
        concurrency = (
            self.args.concurrency if mode == "noop" else max(1, self.args.io_concurrency // self.k)
        )
        base = [sys.executable, "-m", "chronoq.cli"]
        for i in range(self.k):
            self.procs.spawn(
                f"{mode}-worker-{i}",
                [
                    *base,
                    "worker",
                    "--app",
                    "benchmarks.chronoq_app:app",
                    "--concurrency",
                    str(concurrency),
                    "--log-level",
                    "warning",
                ],
            )
        self.procs.spawn(
            f"{mode}-scheduler", [*base, "scheduler", "--log-level", "warning"], worker=False
        )
        return f"{self.k} workers x {concurrency} async slots + scheduler"

    async def enqueue(self, what: str, n: int, one_at_a_time: bool = False) -> list[str]:
        fn = {"noop": self.mod.noop, "sleep": self.mod.sleep, "whoami": self.mod.whoami}[what]
        payload = {"seconds": self.args.io_sleep_ms / 1000} if what == "sleep" else {}
        lanes = 1 if one_at_a_time else max(1, min(self.args.in_flight, n))
        ids: list[str] = []

        async def lane(count: int) -> None:
            for _ in range(count):
                ids.append((await fn.adelay(**payload)).id)

        share, extra = divmod(n, lanes)
        await asyncio.gather(*(lane(share + (i < extra)) for i in range(lanes)))
        return ids

    async def submit_stamp(self, key: str, token: str) -> None:
        await self.mod.stamp.adelay(key=key, token=token)

    async def done_count(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT COUNT(*) FROM tasks WHERE status NOT IN "
                "('scheduled', 'queued', 'running', 'failed')"
            )
        )

    async def outcomes(self, ids: list[str]) -> list[tuple[float | None, bool, str | None]]:
        rows = await self.conn.fetch(
            "SELECT t.status, a.finished_at, a.worker_id FROM tasks t LEFT JOIN attempts a "
            "ON a.task_id = t.id AND a.attempt = t.attempts WHERE t.id = ANY($1::text[])",
            ids,
        )
        return [(r["finished_at"], r["status"] == "succeeded", r["worker_id"]) for r in rows]


class Celery(System):
    """``fast``: :mod:`benchmarks.celery_fast_app` (no result backend, prefetch 64; ends
    read from the handlers' own Redis hash), else :mod:`benchmarks.celery_app`."""

    databases = (DB["celery"], DB["celery-results"])

    def __init__(self, args: argparse.Namespace, log_dir: Path, fast: bool = False) -> None:
        super().__init__(args, log_dir)
        self.fast = fast
        self.name = "celery-fast" if fast else "celery"
        self.app_module = "benchmarks.celery_fast_app" if fast else "benchmarks.celery_app"
        self.env["BENCH_CELERY_BROKER"] = f"{args.redis}/{DB['celery']}"
        self.env["BENCH_CELERY_BACKEND"] = f"{args.redis}/{DB['celery-results']}"
        self.env["BENCH_CELERY_DONE"] = f"{args.redis}/{DB['celery-results']}"

    async def setup(self) -> None:
        for key in (
            "BENCH_CELERY_BROKER",
            "BENCH_CELERY_BACKEND",
            "BENCH_CELERY_DONE",
            "BENCH_STAMPS_URL",
        ):
            os.environ[key] = self.env[key]
        try:
            import celery  # noqa: F401
        except ImportError as exc:
            raise BenchError(
                f"Celery is not installed ({exc}): pip install -e '.[bench]'"
            ) from None
        import redis

        from benchmarks import celery_app, celery_fast_app

        self.mod = celery_fast_app if self.fast else celery_app
        self.results = redis.Redis.from_url(self.env["BENCH_CELERY_BACKEND"])

    async def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.mod.app.close()
        self.results.close()

    def start(self, mode: str) -> str:
        base = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        tag = uuid.uuid4().hex[:6]
        if mode == "noop":
            self.procs.spawn(
                "noop-prefork",
                [*base, "-P", "prefork", "-c", str(self.k), "-n", f"prefork-{tag}@%h"],
            )
            return f"1 prefork parent + {self.k} child processes"
        threads = max(1, self.args.io_concurrency // self.k)
        for i in range(self.k):
            self.procs.spawn(
                f"io-threads-{i}",
                [*base, "-P", "threads", "-c", str(threads), "-n", f"threads{i}-{tag}@%h"],
            )
        return f"{self.k} workers x {threads} threads"

    async def enqueue(self, what: str, n: int, one_at_a_time: bool = False) -> list[str]:
        task = {"noop": self.mod.noop, "sleep": self.mod.sleep, "whoami": self.mod.whoami}[what]
        if what == "sleep":
            seconds = self.args.io_sleep_ms / 1000
            return [task.delay(seconds).id for _ in range(n)]
        return [task.delay().id for _ in range(n)]

    async def submit_stamp(self, key: str, token: str) -> None:
        self.mod.stamp.delay(key, token)

    async def done_count(self) -> int:
        if self.fast:
            return int(self.results.hlen(self.mod.DONE_KEY))
        return int(self.results.dbsize())

    async def outcomes(self, ids: list[str]) -> list[tuple[float | None, bool, str | None]]:
        if self.fast:  # "<time> <pid>" per task id, written by the handler as it ends
            ends: list[tuple[float | None, bool, str | None]] = []
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                for raw in self.results.hmget(self.mod.DONE_KEY, chunk):
                    if raw is None:
                        ends.append((None, False, None))
                        continue
                    at, pid = (raw.decode() if isinstance(raw, bytes) else raw).split()
                    ends.append((float(at), True, pid))
            return ends
        found: list[tuple[float | None, bool, str | None]] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for raw in self.results.mget([f"celery-task-meta-{i}" for i in chunk]):
                if raw is None:
                    found.append((None, False, None))
                    continue
                meta = json.loads(raw)
                found.append(
                    (
                        epoch(meta.get("date_done")),
                        meta.get("status") == "SUCCESS",
                        str(meta.get("result")),
                    )
                )
        return found


class RQ(System):
    databases = (DB["rq"],)

    def __init__(self, args: argparse.Namespace, log_dir: Path, simple: bool) -> None:
        super().__init__(args, log_dir)
        self.simple = simple
        self.name = "rq-simple" if simple else "rq"
        self.url = f"{args.redis}/{DB['rq']}"

    async def setup(self) -> None:
        os.environ["BENCH_STAMPS_URL"] = self.args.stamps_url
        try:
            import rq
        except ImportError as exc:
            raise BenchError(f"RQ is not installed ({exc}): pip install -e '.[bench]'") from None
        import redis

        from benchmarks import rq_tasks

        self.mod = rq_tasks
        self.redis = redis.Redis.from_url(self.url)
        self.queue = rq.Queue("default", connection=self.redis)

    async def teardown(self) -> None:
        self.redis.close()

    def worker_argv(self, name: str) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--url",
            self.url,
            "--name",
            name,
            "--logging_level",
            "WARNING",
            "--disable-job-desc-logging",
        ]
        if self.simple:
            argv += ["--worker-class", "rq.worker.SimpleWorker"]
        return [*argv, "default"]

    def start(self, mode: str) -> str:
        tag = uuid.uuid4().hex[:6]
        for i in range(self.k):
            self.procs.spawn(f"{mode}-rq-{i}", self.worker_argv(f"rq{i}-{tag}"))
        kind = "SimpleWorker (no fork)" if self.simple else "Worker (fork per job)"
        return f"{self.k} processes x 1 job, {kind}"

    def start_pool(self, processes: int) -> str:
        """``rq worker-pool`` of SimpleWorkers (the extra phase-3 run)."""
        self.procs.spawn(
            "io-pool",
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker-pool",
                "--url",
                self.url,
                "-n",
                str(processes),
                "--logging-level",
                "WARNING",
                "--worker-class",
                "rq.worker.SimpleWorker",
                "default",
            ],
        )
        return f"worker-pool of {processes} SimpleWorker processes"

    async def enqueue(self, what: str, n: int, one_at_a_time: bool = False) -> list[str]:
        fn = {"noop": self.mod.noop, "sleep": self.mod.sleep, "whoami": self.mod.whoami}[what]
        args = (self.args.io_sleep_ms / 1000,) if what == "sleep" else ()
        return [self.queue.enqueue(fn, *args, result_ttl=3600).id for _ in range(n)]

    async def submit_stamp(self, key: str, token: str) -> None:
        self.queue.enqueue(self.mod.stamp, key, token, result_ttl=3600)

    async def done_count(self) -> int:
        return int(self.redis.zcard("rq:finished:default") + self.redis.zcard("rq:failed:default"))

    async def outcomes(self, ids: list[str]) -> list[tuple[float | None, bool, str | None]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(f"rq:job:{job_id}", "ended_at", "status", "worker_name")
            rows = pipe.execute()
        return [
            (epoch(ended), status == b"finished", worker.decode() if worker else None)
            for ended, status, worker in rows
        ]


def make_system(name: str, args: argparse.Namespace, log_dir: Path) -> System:
    if name.startswith("chronoq"):
        return Chronoq(args, log_dir, broker=name == "chronoq-redis")
    if name in ("celery", "celery-fast"):
        return Celery(args, log_dir, fast=name == "celery-fast")
    return RQ(args, log_dir, simple=name == "rq-simple")


# -- phases -------------------------------------------------------------------------------------
async def wait_done(system: System, target: int, timeout: float, what: str) -> float:
    """Poll until ``done_count() >= target``; returns when it was seen (epoch seconds)."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        done = await system.done_count()
        if done >= target:
            return time.time()
        system.procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what}: timed out after {timeout:.0f}s ({done}/{target} outcomes recorded)"
            )
        if time.monotonic() - last_report > 10:
            say(f"    ... {what}: {done}/{target}")
            last_report = time.monotonic()
        await asyncio.sleep(0.05)


async def finish_times(system: System, ids: list[str], result: Result, what: str) -> list[float]:
    rows = await system.outcomes(ids)
    failed = sum(1 for _, ok, _ in rows if not ok) + (len(ids) - len(rows))
    if failed:
        result.failed_tasks += failed
        result.errors.append(f"{what}: {failed} of {len(ids)} tasks did not succeed")
    return [t for t, _, _ in rows if t is not None]


async def warm_up(system: System, expected: int, timeout: float) -> None:
    """Enqueue small batches until ``expected`` distinct processes ran one, and they all
    finished."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while True:
        system.procs.check_alive()
        base = await system.done_count()
        ids = await system.enqueue("whoami", 8 * expected)
        await wait_done(system, base + len(ids), max(1.0, deadline - time.monotonic()), "warm-up")
        rows = await system.outcomes(ids)
        seen |= {who for _, ok, who in rows if ok and who}
        if len(seen) >= expected:
            return
        if time.monotonic() > deadline:
            raise BenchError(
                f"warm-up: only {len(seen)} of {expected} worker processes ran "
                f"a task in {timeout:.0f}s"
            )
        await asyncio.sleep(0.2)


async def throughput(system: System, result: Result, profiler: Profiler | None) -> None:
    n, timeout = result.tasks, system.args.timeout
    await asyncio.sleep(0.5)
    say(f"  [1] enqueueing {n:,} no-op tasks while the workers run")
    base = await system.done_count()
    if profiler:
        profiler.start_client(system)
    try:
        first = time.time()
        t0 = time.perf_counter()
        ids = await system.enqueue("noop", n)
        result.enqueue_seconds = time.perf_counter() - t0
        result.enqueue_per_second = n / result.enqueue_seconds
        await wait_done(system, base + n, timeout, "throughput")
    finally:
        if profiler:
            profiler.stop_client(system)
    finished = await finish_times(system, ids, result, "throughput")
    if finished:
        result.end_to_end_seconds = max(finished) - first
        result.end_to_end_per_second = len(finished) / result.end_to_end_seconds
    say(
        f"      enqueue {result.enqueue_per_second:,.0f}/s, end-to-end "
        f"{result.end_to_end_per_second or 0:,.0f}/s"
    )

    m = max(1, n // 5)
    say(f"  [1] enqueueing {m:,} more, one call at a time")
    await asyncio.sleep(0.5)
    base = await system.done_count()
    first = time.time()
    t0 = time.perf_counter()
    ids = await system.enqueue("noop", m, one_at_a_time=True)
    result.serial_enqueue_per_second = m / (time.perf_counter() - t0)
    await wait_done(system, base + m, timeout, "one at a time")
    finished = await finish_times(system, ids, result, "one at a time")
    if finished:
        result.serial_end_to_end_per_second = len(finished) / (max(finished) - first)
    say(
        f"      enqueue {result.serial_enqueue_per_second:,.0f}/s, end-to-end "
        f"{result.serial_end_to_end_per_second or 0:,.0f}/s"
    )

    say(f"  [1] backlog: workers paused, enqueueing {n:,}, resuming")
    await asyncio.sleep(0.5)
    base = await system.done_count()
    system.procs.pause()
    try:
        t0 = time.perf_counter()
        ids = await system.enqueue("noop", n)
        result.backlog_enqueue_per_second = n / (time.perf_counter() - t0)
        servers = ServerCpu()
        if profiler:
            profiler.start_workers(system)
        worker_before = system.procs.cpu()
        resumed = time.time()
    finally:
        system.procs.resume()
    try:
        await wait_done(system, base + n, timeout, "backlog")
    finally:
        if profiler:
            profiler.stop_workers(system)
    result.worker_cpu_ms_per_task = (system.procs.cpu() - worker_before) * 1000 / n
    result.server_cpu_ms_per_task = servers.spent() * 1000 / n
    finished = await finish_times(system, ids, result, "backlog")
    if finished:
        result.drain_seconds = max(finished) - resumed
        result.drain_per_second = len(finished) / result.drain_seconds
    say(
        f"      drain {result.drain_per_second or 0:,.0f}/s, worker CPU "
        f"{result.worker_cpu_ms_per_task:.2f} ms/task, servers "
        f"{result.server_cpu_ms_per_task:.2f} ms/task"
    )


async def cold_drain(system: System, result: Result) -> str:
    """N tasks queued while no worker process runs, then the no-op layout started: the
    backlog drain from cold (spawn -> last completion, start-up and warm-up included),
    with the PostgreSQL + Redis server CPU it took. Returns the layout (left running)."""
    n, timeout = result.tasks, system.args.timeout
    say(f"  [1c] cold drain: {n:,} tasks queued with no worker running, then workers started")
    base = await system.done_count()
    ids = await system.enqueue("noop", n)
    await asyncio.sleep(0.5)
    servers = ServerCpu()
    spawned = time.time()
    layout = system.start("noop")
    await wait_done(system, base + n, timeout, "cold drain")
    result.cold_server_cpu_ms_per_task = servers.spent() * 1000 / n
    finished = await finish_times(system, ids, result, "cold drain")
    if finished:
        result.cold_drain_seconds = max(finished) - spawned
        result.cold_drain_per_second = len(finished) / result.cold_drain_seconds
    say(
        f"      cold drain {result.cold_drain_per_second or 0:,.0f}/s, servers "
        f"{result.cold_server_cpu_ms_per_task:.2f} ms/task"
    )
    return layout


async def latency(system: System, result: Result, stamps: Any) -> None:
    args = system.args
    n, gap = args.latency_tasks, 1.0 / args.latency_rate
    if n <= 0:
        return
    say(f"  [2] latency: {n} tasks one by one at {args.latency_rate:g}/s")
    await asyncio.sleep(1.0)  # let the workers go idle
    key = f"bench:start:{system.name}:{uuid.uuid4().hex[:8]}"
    submitted: dict[str, float] = {}
    t0 = time.monotonic()
    for i in range(n):
        pause = t0 + i * gap - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        token = str(i)
        submitted[token] = time.time()
        await system.submit_stamp(key, token)
    deadline = time.monotonic() + args.timeout
    while stamps.hlen(key) < n:
        system.procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"latency: only {stamps.hlen(key)} of {n} tasks started")
        await asyncio.sleep(0.05)
    started = {k.decode(): float(v) for k, v in stamps.hgetall(key).items()}
    result.latency_samples = [started[t] - submitted[t] for t in submitted]
    result.latency = result.latency_pooled = Percentiles.of(result.latency_samples)
    say(f"      p50 {result.latency.p50_ms:.2f} ms, p99 {result.latency.p99_ms:.2f} ms")


async def io_bound(system: System, result: Result) -> tuple[float, float]:
    args = system.args
    n = result.io_tasks
    await asyncio.sleep(0.5)
    say(f"  [3] I/O-bound: {n} tasks sleeping {args.io_sleep_ms:g} ms")
    base = await system.done_count()
    first = time.time()
    ids = await system.enqueue("sleep", n)
    await wait_done(system, base + n, args.timeout, "I/O-bound")
    finished = await finish_times(system, ids, result, "I/O-bound")
    if not finished:
        raise BenchError("I/O-bound: no task finished")
    wall = max(finished) - first
    return wall, len(finished) / wall


class Profiler:
    """Phase 1 of chronoq under profilers: pyinstrument on this client while it enqueues
    (workers running), py-spy (raw collapsed stacks, 250 Hz) on the first worker while it
    drains the backlog."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.spy: list[subprocess.Popen[bytes]] = []
        self.instrument: Any = None

    def start_client(self, system: System) -> None:
        if not isinstance(system, Chronoq):
            return
        try:
            from pyinstrument import Profiler as Instrument
        except ImportError:
            say("    (pyinstrument not installed: no client profile)")
            return
        self.instrument = Instrument(interval=0.001, async_mode="enabled", use_timing_thread=True)
        self.instrument.start()

    def stop_client(self, system: System) -> None:
        if self.instrument is None:
            return
        self.instrument.stop()
        (self.out / f"{system.name}-client.txt").write_text(
            self.instrument.output_text(unicode=False, color=False, show_all=False)
        )
        (self.out / f"{system.name}-client.html").write_text(self.instrument.output_html())
        self.instrument = None
        say(f"    client profile in {self.out}/{system.name}-client.txt")

    def start_workers(self, system: System) -> None:
        if not isinstance(system, Chronoq):
            return
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            say("    (py-spy not installed: no worker profile)")
            return
        for i, proc in enumerate(system.procs.workers[:1]):
            raw = self.out / f"{system.name}-worker{i}-drain.txt"
            self.spy.append(
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(proc.pid),
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # py-spy attaches

    def stop_workers(self, system: System) -> None:
        for proc in self.spy:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        if self.spy:
            say(f"    worker profile in {self.out}/{system.name}-worker0-drain.txt")
        self.spy.clear()


# -- one system ---------------------------------------------------------------------------------
def flush(redis_base: str, databases: Iterable[int]) -> None:
    import redis

    for db in databases:
        client = redis.Redis.from_url(f"{redis_base}/{db}")
        try:
            client.flushdb()
        finally:
            client.close()


async def run_system(
    name: str, args: argparse.Namespace, stamps: Any, profiler: Profiler | None
) -> Result:
    log_dir = Path(tempfile.mkdtemp(prefix=f"chronoq-compare-{name}-"))
    system = make_system(name, args, log_dir)
    result = Result(system=name, tasks=args.tasks, io_tasks=args.io_tasks)
    if args.quiet_below < 1:
        result.cpu_busy_before = round(wait_quiet(args.quiet_below, args.quiet_wait), 3)
    result.load_average.append(round(os.getloadavg()[0], 2))
    say(
        f"[{LABELS[name]}] load average {result.load_average[0]:.2f}, CPU "
        f"{result.cpu_busy_before:.0%} busy before"
    )
    dbs = (*system.databases, DB["stamps"])
    flush(args.redis, dbs)
    set_up = False
    try:
        await system.setup()
        set_up = True
        # phases 1 and 2: the no-op layout
        result.layout = system.start("noop")
        result.processes = len(system.procs.workers)
        say(f"  started {result.layout}; warming up")
        await warm_up(system, args.workers, args.start_timeout)
        result.processes = system.procs.count()
        try:
            await throughput(system, result, profiler)
        except BenchError as exc:
            result.errors.append(str(exc))
            say(f"  FAILED: {exc}")
        try:
            await latency(system, result, stamps)
        except BenchError as exc:
            result.errors.append(str(exc))
            say(f"  FAILED: {exc}")
        result.worker_peak_rss_mib = system.procs.peak_rss_mib()
        result.errors += system.procs.stop()
        if args.cold_drain:
            try:
                await cold_drain(system, result)
            except BenchError as exc:
                result.errors.append(str(exc))
                say(f"  FAILED: {exc}")
            result.errors += system.procs.stop()
        # phase 3: the I/O layout (RQ keeps its one-job-per-process workers)
        result.io_layout = system.start("io")
        say(f"  restarted: {result.io_layout}")
        await warm_up(system, args.workers, args.start_timeout)
        result.io_wall_seconds, result.io_per_second = await io_bound(system, result)
        say(f"      wall {result.io_wall_seconds:.2f}s, {result.io_per_second:,.0f} tasks/s")
        result.errors += system.procs.stop()
        if isinstance(system, RQ) and system.simple and args.rq_io_processes:
            layout = system.start_pool(args.rq_io_processes)
            say(f"  extra: {layout}")
            await warm_up(system, args.rq_io_processes, max(args.start_timeout, 120.0))
            wall, rate = await io_bound(system, result)
            result.io_extra = {
                "layout": layout,
                "wall_seconds": wall,
                "per_second": rate,
                "peak_rss_mib": system.procs.peak_rss_mib(),
            }
            say(f"      wall {wall:.2f}s, {rate:,.0f} tasks/s")
    except BenchError as exc:
        result.errors.append(str(exc))
        say(f"  FAILED: {exc}")
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        say(f"  FAILED: {type(exc).__name__}: {exc}")
    finally:
        result.errors += system.procs.stop()
        lines = [line for line in system.procs.log_lines() if _interesting(line)]
        result.stderr_sample = lines[:10]
        if set_up:
            with contextlib.suppress(Exception):
                await system.teardown()
        flush(args.redis, dbs)
        result.load_average.append(round(os.getloadavg()[0], 2))
        if args.keep_logs:
            say(f"  logs in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _interesting(line: str) -> bool:
    """Log lines worth showing: errors, not Celery's banner or its running-as-root warning."""
    return any(word in line for word in ("ERROR", "Traceback", "CRITICAL", '"level":"ERROR"'))


# -- output -------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


ROWS: list[tuple[str, Callable[[Result], float | None], int, bool]] = [
    # (label, getter, digits, higher is better)
    ("(1) enqueue/s, workers running", lambda r: r.enqueue_per_second, 0, True),
    ("(1) end-to-end tasks/s", lambda r: r.end_to_end_per_second, 0, True),
    ("(1) enqueue/s, one call at a time", lambda r: r.serial_enqueue_per_second, 0, True),
    ("(1) end-to-end/s, one at a time", lambda r: r.serial_end_to_end_per_second, 0, True),
    ("(1) enqueue/s, workers paused", lambda r: r.backlog_enqueue_per_second, 0, True),
    ("(1) drain tasks/s (backlog)", lambda r: r.drain_per_second, 0, True),
    ("(1) worker CPU ms/task (drain)", lambda r: r.worker_cpu_ms_per_task, 2, False),
    ("(1) PG+Redis CPU ms/task (drain)", lambda r: r.server_cpu_ms_per_task, 2, False),
    ("(1c) drain tasks/s, workers started cold", lambda r: r.cold_drain_per_second, 0, True),
    ("(1c) PG+Redis CPU ms/task (cold drain)", lambda r: r.cold_server_cpu_ms_per_task, 2, False),
    ("(2) submit->start p50 ms", lambda r: r.latency.p50_ms, 2, False),
    ("(2) submit->start p99 ms", lambda r: r.latency.p99_ms, 2, False),
    ("(2) p99 ms, all runs pooled", lambda r: r.latency_pooled.p99_ms, 2, False),
    ("(3) I/O wall s", lambda r: r.io_wall_seconds, 2, False),
    ("(3) I/O tasks/s", lambda r: r.io_per_second, 0, True),
    ("worker peak RSS MiB (sum)", lambda r: r.worker_peak_rss_mib, 0, False),
]


def table(
    results: list[Result], args: argparse.Namespace, runs: list[list[Result]] | None = None
) -> str:
    by = {r.system: r for r in results}
    chronoqs = [r for r in results if r.system.startswith("chronoq")]
    headers = ["figure", *(LABELS[r.system] for r in results)]
    # chronoq / each Celery setup: the fast one (the main row) first
    ratio_cols = [(r, by[c]) for c in ("celery-fast", "celery") if c in by for r in chronoqs]
    headers += [
        f"{'pg' if r.system == 'chronoq-pg' else 'pg+redis'}/{LABELS[c.system]}"
        for r, c in ratio_cols
    ]
    rows = []
    for label, get, digits, _ in ROWS:
        row = [label, *(_num(get(r), digits) for r in results)]
        for r, celery in ratio_cols:
            mine, theirs = get(r), get(celery)
            row.append(f"{mine / theirs:.2f}x" if mine is not None and theirs else "-")
        rows.append(row)
    rows.append(
        ["processes (1-2)", *(str(r.processes or "-") for r in results), *("" for _ in ratio_cols)]
    )
    rows.append(
        [
            "CPU busy before / load",
            *(
                f"{r.cpu_busy_before:.0%} / " + "-".join(f"{x:.1f}" for x in r.load_average)
                for r in results
            ),
            *("" for _ in ratio_cols),
        ]
    )
    rows.append(
        [
            "problems",
            *(f"{len(r.errors)} (see below)" if r.errors else "none" for r in results),
            *("" for _ in ratio_cols),
        ]
    )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = []
    for n, cells in enumerate([headers, *rows]):
        numeric = n > 0 and n <= len(ROWS)
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 or not numeric else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [
        "",
        f"N = {args.tasks:,} no-op tasks per throughput run; latency: {args.latency_tasks} "
        f"tasks at {args.latency_rate:g}/s; I/O: {args.io_tasks} x {args.io_sleep_ms:g} ms "
        f"sleeps, concurrency {args.io_concurrency} over {args.workers} processes where the "
        "system can.",
        "ratios are chronoq / Celery of the raw figure: above 1 is better for rates, worse "
        "for CPU, latency, wall time and RSS.",
        "RQ runs one job at a time per worker process: with "
        f"{args.workers} processes its I/O concurrency is {args.workers}, not "
        f"{args.io_concurrency}.",
    ]
    if args.repeat > 1 and runs:
        notes.append(
            f"each figure is the median of {args.repeat} runs (the systems took "
            "turns in each round); per run:"
        )
        for label, get, digits in (
            ("end-to-end/s", lambda r: r.end_to_end_per_second, 0),
            ("p50 ms", lambda r: r.latency.p50_ms, 2),
            ("p99 ms", lambda r: r.latency.p99_ms, 2),
        ):
            notes.append(
                f"  {label}: "
                + "; ".join(
                    f"{LABELS[rs[0].system]} " + ", ".join(_num(get(x), digits) for x in rs)
                    for rs in runs
                )
            )
    for r in results:
        notes.append(f"{LABELS[r.system]}: (1-2) {r.layout or '-'}; (3) {r.io_layout or '-'}")
        if r.system in CELERY_SETUPS:
            notes.append(f"  {LABELS[r.system]} = {CELERY_SETUPS[r.system]}")
    for r in results:
        if r.io_extra:
            notes.append(
                f"{LABELS[r.system]} extra I/O run, {r.io_extra['layout']}: wall "
                f"{r.io_extra['wall_seconds']:.2f}s, {r.io_extra['per_second']:,.0f} "
                f"tasks/s, peak RSS {r.io_extra['peak_rss_mib']:,.0f} MiB"
            )
        for error in r.errors:
            notes.append(f"{LABELS[r.system]}: {error}")
        for line in r.stderr_sample:
            notes.append(f"{LABELS[r.system]} log: {line[:200]}")
    return "\n".join([*lines, *notes])


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import chronoq

    versions: dict[str, str | None] = {"chronoq": chronoq.__version__}
    for module in ("celery", "kombu", "rq", "redis", "asyncpg"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    return {
        **versions,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "postgres_url": args.database_url,
        "redis_url": args.redis,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the same workloads on chronoq, Celery and RQ and compare them."
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from {', '.join(SYSTEMS)} (default all)",
    )
    parser.add_argument(
        "-n",
        "--tasks",
        type=int,
        default=10_000,
        help="no-op tasks per throughput run (default 10000)",
    )
    parser.add_argument(
        "-k", "--workers", type=int, default=2, help="worker processes per system (default 2)"
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=16,
        help="chronoq slots per worker in phases 1-2 (default 16)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=64,
        help="concurrent chronoq adelay() calls when enqueuing (default 64)",
    )
    parser.add_argument(
        "--latency-tasks",
        type=int,
        default=1000,
        help="tasks in the latency phase; 0 skips it (default 1000)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=100.0,
        help="submissions per second in the latency phase (default 100)",
    )
    parser.add_argument(
        "--io-tasks", type=int, default=1000, help="tasks in the I/O-bound phase (default 1000)"
    )
    parser.add_argument(
        "--io-sleep-ms",
        type=float,
        default=50.0,
        help="how long each I/O-bound task sleeps (default 50)",
    )
    parser.add_argument(
        "--io-concurrency",
        type=int,
        default=100,
        help="tasks at once in the I/O phase, over all processes (default 100)",
    )
    parser.add_argument(
        "--rq-io-processes",
        type=int,
        default=0,
        metavar="P",
        help="also run phase 3 on an rq worker-pool of P SimpleWorkers (e.g. 100; default off)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_POSTGRES,
        help=f"PostgreSQL for chronoq (default {DEFAULT_POSTGRES}); each "
        "configuration gets a new schema, dropped afterwards",
    )
    parser.add_argument(
        "--redis",
        default=DEFAULT_REDIS,
        help=f"Redis server, without a database number (default "
        f"{DEFAULT_REDIS}); databases 7-11 are used and flushed",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="give up on a phase after this many seconds (default 600)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds for a system's workers to start and warm up",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile chronoq's phase 1 (pyinstrument on the client while "
        "it enqueues, py-spy on a worker while it drains) into DIR; "
        "skews that run's figures",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.3,
        metavar="FRACTION",
        help="before each system, wait until the machine's CPU is less than "
        "this busy for 3 s (default 0.3; 1 disables)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="longest such wait (default 180)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="run every system R times, taking turns, and print the median "
        "of each figure (default 1)",
    )
    parser.add_argument(
        "--no-cold-drain",
        dest="cold_drain",
        action="store_false",
        help="skip phase 1c (N tasks queued before the workers start, drained from cold)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--json-out", type=Path, metavar="FILE", help="also write the JSON document to FILE"
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if (
        min(
            args.tasks,
            args.workers,
            args.concurrency,
            args.in_flight,
            args.io_tasks,
            args.io_concurrency,
            args.repeat,
        )
        < 1
        or args.latency_rate <= 0
    ):
        parser.error("counts and rates must be positive")
    args.redis = args.redis.rstrip("/")
    args.stamps_url = f"{args.redis}/{DB['stamps']}"
    return args


def preflight(args: argparse.Namespace) -> None:
    """Fail early and clearly when a server is missing."""
    import asyncpg
    import redis

    try:
        client = redis.Redis.from_url(args.stamps_url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        raise SystemExit(f"cannot reach Redis at {args.redis}: {exc}") from None

    async def pg() -> None:
        global POSTMASTER
        conn = await asyncpg.connect(args.database_url, timeout=5)
        try:  # the server's own processes, for its CPU per task (same machine only)
            data = await conn.fetchval(
                "SELECT setting FROM pg_settings WHERE name = 'data_directory'"
            )
            text = (Path(data) / "postmaster.pid").read_text()
            POSTMASTER = int(text.split()[0])
        except (OSError, ValueError, IndexError, asyncpg.PostgresError):
            POSTMASTER = None
        await conn.close()

    if any(s.startswith("chronoq") for s in args.systems):
        try:
            asyncio.run(pg())
        except (OSError, asyncpg.PostgresError) as exc:
            raise SystemExit(f"cannot reach PostgreSQL at {args.database_url}: {exc}") from None


async def main_async(args: argparse.Namespace) -> list[list[Result]]:
    """Each system's results, one per round; the systems take turns within a round, so a
    change in the machine's load affects all of them alike."""
    import redis

    stamps = redis.Redis.from_url(args.stamps_url)
    profiler = Profiler(args.profile) if args.profile else None
    runs: dict[str, list[Result]] = {name: [] for name in args.systems}
    try:
        for round_ in range(args.repeat):
            if args.repeat > 1:
                say(f"== round {round_ + 1} of {args.repeat}")
            for name in args.systems:
                runs[name].append(await run_system(name, args, stamps, profiler))
    finally:
        stamps.close()
    return list(runs.values())


def median_result(runs: list[Result]) -> Result:
    """One result whose every figure is the median of the runs' (errors of all runs)."""
    if len(runs) == 1:
        return runs[0]
    merged = dataclasses.replace(
        runs[0],
        errors=[e for r in runs for e in r.errors],
        failed_tasks=sum(r.failed_tasks for r in runs),
    )
    for name in (
        "enqueue_per_second",
        "end_to_end_per_second",
        "backlog_enqueue_per_second",
        "serial_enqueue_per_second",
        "serial_end_to_end_per_second",
        "drain_per_second",
        "worker_cpu_ms_per_task",
        "server_cpu_ms_per_task",
        "cold_drain_per_second",
        "cold_server_cpu_ms_per_task",
        "io_wall_seconds",
        "io_per_second",
        "worker_peak_rss_mib",
    ):
        setattr(merged, name, _median(getattr(r, name) for r in runs))
    merged.latency = dataclasses.replace(
        runs[0].latency,
        **{
            name: _median(getattr(r.latency, name) for r in runs)
            for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "min_ms")
        },
    )
    merged.latency_pooled = Percentiles.of([x for r in runs for x in r.latency_samples])
    merged.cpu_busy_before = max(r.cpu_busy_before for r in runs)
    merged.load_average = [
        min(x for r in runs for x in r.load_average or [0.0]),
        max(x for r in runs for x in r.load_average or [0.0]),
    ]
    return merged


def _json(result: Result) -> dict[str, Any]:
    """A result as JSON, without its raw latency samples."""
    doc = asdict(result)
    del doc["latency_samples"]
    return doc


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args)
    env = environment(args)
    say(
        f"chronoq {env['chronoq']}, celery {env['celery']}, rq {env['rq']}, "
        f"redis-py {env['redis']}; {env['cpus']} CPUs, load {env['load_average_at_start']}"
    )
    runs = asyncio.run(main_async(args))
    results = [median_result(r) for r in runs]
    doc = json.dumps(
        {
            "environment": env,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": [_json(r) for r in results],
            "runs": {r[0].system: [_json(x) for x in r] for r in runs},
        },
        indent=2,
    )
    if args.json_out:
        args.json_out.write_text(doc + "\n")
    if args.json:
        print(doc)
    else:
        print(
            f"chronoq {env['chronoq']} vs Celery {env['celery']} (kombu {env['kombu']}) vs "
            f"RQ {env['rq']}; redis-py {env['redis']}, Python {env['python']}, "
            f"{env['cpus']} CPU cores, load average at start "
            f"{', '.join(f'{x:.2f}' for x in env['load_average_at_start'])}\n"
        )
        print(table(results, args, runs), flush=True)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
