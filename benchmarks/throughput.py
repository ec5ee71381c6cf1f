"""Throughput and latency benchmark: N no-op tasks, K worker processes, SQLite and PostgreSQL.

Run from the repository root (the workers import ``benchmarks.bench_app``)::

    python benchmarks/throughput.py                      # both back-ends, 10,000 tasks, 2x16
    python benchmarks/throughput.py --backend postgres -n 50000 -k 4 --concurrency 32
    python benchmarks/throughput.py --backend sqlite --json > sqlite.json
    python benchmarks/throughput.py --database-url postgresql://me@db:5432/bench

Each back-end gets a fresh database: SQLite a new file in a temporary directory,
PostgreSQL a new schema ``bench_<random>`` (``?schema=`` URL option) that is dropped at
the end (``--keep`` keeps either for inspection). The benchmark then

1. starts K real worker processes, each ``chronoq worker --app benchmarks.bench_app:app
   --concurrency C --log-level warning`` (run as ``python -m chronoq.cli`` so it uses this
   interpreter), and warms them up until every one of them has run a task;
2. **loaded phase**: submits N ``bench.noop`` tasks as fast as it can (``--in-flight``
   concurrent ``Store.create_task`` calls on one store, as an application would) while the
   workers drain them, and waits until all N are finished (a COUNT query every 100 ms);
3. **backlog phase** (skip with ``--no-backlog``): pauses the workers (SIGSTOP), submits
   another N tasks, resumes them (SIGCONT) and times how fast they empty the queue;
4. **idle phase**: submits ``--idle-tasks`` tasks one at a time, ``--idle-gap-ms`` apart,
   to the otherwise idle system;
5. stops the workers with SIGTERM and reads everything else from the database.

The figures:

``submit/s``
    N / (time from the first submit call to the return of the last one).
``drain/s``
    tasks/s end to end: N / (last ``attempts.finished_at`` - first submit call).
``backlog/s``
    worker capacity on its own: N / (last ``finished_at`` of the backlog - SIGCONT). When
    ``drain/s`` is close to ``submit/s`` the loaded phase was limited by the submitter,
    and this is the figure that tells what the workers could do.
``loaded p50/p95/p99``
    submit→start latency under load, ``attempts.started_at - tasks.created_at`` for every
    task of the loaded phase. Both are epoch seconds taken with ``time.time()`` on this
    machine (one clock). It includes the time a task waits behind the backlog, so it grows
    with N whenever submitting is faster than draining.
``idle p50/p95/p99``
    the same for the idle phase: the pick-up latency of a lone task, the figure to compare
    with e.g. Celery's ~1 ms. Without cross-process notifications (SQLite) it is bounded by
    the workers' poll interval (``CHRONOQ_POLL_SECONDS``, 1 s unless ``--poll-seconds``).
``worker RSS``
    peak resident set (``VmHWM`` from ``/proc/<pid>/status``) of each worker, in MiB.
``problems``
    tasks that did not succeed, workers that exited with a non-zero code and lines the
    workers wrote to stderr (at ``--log-level warning`` only warnings and errors).

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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg

import chronoq
from chronoq.models import TaskCreate
from chronoq.store import Store, create_store
from chronoq.store.postgres import PostgresStore, split_schema

REPO = Path(__file__).resolve().parent.parent
APP = "benchmarks.bench_app:app"
TASK = "bench.noop"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------
@dataclass
class Percentiles:
    count: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    min_ms: float | None = None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles:
        if not seconds:
            return cls()
        ms = sorted(s * 1000.0 for s in seconds)
        if len(ms) == 1:
            return cls(1, ms[0], ms[0], ms[0], ms[0], ms[0])
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(len(ms), cuts[49], cuts[94], cuts[98], ms[-1], ms[0])

    def brief(self) -> str:
        if self.p50_ms is None or self.p95_ms is None or self.p99_ms is None:
            return "-"
        return f"{_ms(self.p50_ms)} / {_ms(self.p95_ms)} / {_ms(self.p99_ms)}"


@dataclass
class Result:
    backend: str
    database: str
    tasks: int
    workers: int
    concurrency: int
    in_flight: int
    poll_seconds: float | None
    submit_seconds: float = 0.0
    submit_rate: float = 0.0
    drain_seconds: float = 0.0
    tasks_per_second: float = 0.0
    tail_seconds: float = 0.0
    backlog_seconds: float = 0.0
    backlog_tasks_per_second: float = 0.0
    loaded_latency: Percentiles = field(default_factory=Percentiles)
    idle_tasks: int = 0
    idle_gap_ms: float = 0.0
    idle_latency: Percentiles = field(default_factory=Percentiles)
    worker_peak_rss_mib: list[float] = field(default_factory=list)
    worker_exit_codes: list[int | None] = field(default_factory=list)
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
        if self.stderr_lines:
            found.append(f"{self.stderr_lines} stderr lines")
        return ", ".join(found) or "none"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


# -- worker processes ---------------------------------------------------------------------------
class Workers:
    """K ``chronoq worker`` processes (plus an optional ``chronoq scheduler``)."""

    def __init__(self, url: str, count: int, concurrency: int, *, poll_seconds: float | None,
                 scheduler: bool, log_dir: Path) -> None:
        self.env = {**os.environ, "CHRONOQ_DATABASE_URL": url}
        self.env.pop("CHRONOQ_APP", None)
        if poll_seconds is not None:
            self.env["CHRONOQ_POLL_SECONDS"] = str(poll_seconds)
        self.count, self.concurrency, self.scheduler = count, concurrency, scheduler
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._files: list[IO[bytes]] = []

    def _spawn(self, label: str, args: list[str]) -> None:
        log = self.log_dir / f"{label}.stderr"
        handle = log.open("wb")
        self._files.append(handle)
        self.logs.append(log)
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "chronoq.cli", *args, "--log-level", "warning"],
            cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=handle,
        ))

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(f"worker-{i}", ["worker", "--app", APP,
                                        "--concurrency", str(self.concurrency)])
        if self.scheduler:
            self._spawn("scheduler", ["scheduler"])

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.procs[: self.count]

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            code = proc.poll()
            if code is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(f"{log.stem} (pid {proc.pid}) exited with code {code}:\n"
                                   + "\n".join(tail))

    def pause(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGCONT)

    def peak_rss_mib(self) -> list[float]:
        """``VmHWM`` of each live worker, in MiB (read before stopping them)."""
        peaks = []
        for proc in self.workers:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(round(int(line.split()[1]) / 1024, 1))
        return peaks

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        """SIGTERM everything, wait, SIGKILL what is left; the workers' exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"  pid {proc.pid} ignored SIGTERM for {timeout:.0f}s; killing it")
                proc.kill()
                proc.wait()
        for handle in self._files:
            handle.close()
        return [proc.returncode for proc in self.workers]

    def stderr(self) -> list[str]:
        lines = []
        for log in self.logs:
            lines += [f"{log.stem}: {line}" for line in
                      log.read_text(errors="replace").splitlines() if line.strip()]
        return lines


# -- database helpers ---------------------------------------------------------------------------
async def fetch(store: Store, sql: str, *args: Any) -> list[Any]:
    async with store.conn() as c:
        return list(await c.fetch(sql, *args))


async def status_counts(store: Store, since: float) -> dict[str, int]:
    rows = await fetch(store, "SELECT status, COUNT(*) AS n FROM tasks WHERE created_at >= $1 "
                              "GROUP BY status", since)
    return {r["status"]: int(r["n"]) for r in rows}


async def pending(store: Store) -> int:
    """Tasks not yet finished (cheap: the phases run one after another, so every queued or
    running task belongs to the current phase, and ``tasks_by_status`` answers this)."""
    rows = await fetch(store, "SELECT COUNT(*) AS n FROM tasks "
                              "WHERE status IN ('scheduled', 'queued', 'running', 'failed')")
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
            raise RuntimeError(f"only {seen} of {workers.count} workers ran a task in "
                               f"{max_wait:.0f}s")
    if not await wait_finished(store, workers, submitted, max_wait):
        raise RuntimeError("warm-up tasks did not finish")


async def loaded_phase(store: Store, workers: Workers, result: Result, max_wait: float) -> None:
    n = result.tasks
    say(f"  loaded: submitting {n} tasks ({result.in_flight} in flight)")
    since = time.time()
    t0 = time.perf_counter()
    await submit_many(store, n, result.in_flight)
    result.submit_seconds = time.perf_counter() - t0
    result.submit_rate = n / result.submit_seconds
    say(f"  loaded: submitted in {result.submit_seconds:.2f}s "
        f"({result.submit_rate:,.0f}/s); draining")
    result.timed_out = not await wait_finished(store, workers, n, max_wait)
    rows = await timings(store, since)
    finished = [r["finished"] for r in rows if r["finished"] is not None]
    if finished:
        result.drain_seconds = max(finished) - since
        result.tasks_per_second = len(finished) / result.drain_seconds
        result.tail_seconds = max(0.0, result.drain_seconds - result.submit_seconds)
    result.loaded_latency = Percentiles.of([r["started"] - r["created"] for r in rows])
    bad = {s: c for s, c in (await status_counts(store, since)).items() if s != "succeeded"}
    result.not_succeeded.update({f"loaded {s}": c for s, c in bad.items()})


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


async def backlog_phase(store: Store, workers: Workers, result: Result, max_wait: float,
                        sqlite_path: Path | None) -> None:
    n = result.tasks
    say(f"  backlog: pausing the workers, submitting {n} tasks")
    await pause_workers(workers, sqlite_path)
    since = time.time()
    try:
        await submit_many(store, n, result.in_flight)
    finally:
        resumed = time.time()
        workers.resume()
    say("  backlog: workers resumed; draining")
    if not await wait_finished(store, workers, n, max_wait):
        result.timed_out = True
    rows = await timings(store, since)
    finished = [r["finished"] for r in rows if r["finished"] is not None]
    if finished:
        result.backlog_seconds = max(finished) - resumed
        result.backlog_tasks_per_second = len(finished) / result.backlog_seconds
    bad = {s: c for s, c in (await status_counts(store, since)).items() if s != "succeeded"}
    result.not_succeeded.update({f"backlog {s}": c for s, c in bad.items()})


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
    bad = {s: c for s, c in (await status_counts(store, since)).items() if s != "succeeded"}
    result.not_succeeded.update({f"idle {s}": c for s, c in bad.items()})


# -- one back-end -------------------------------------------------------------------------------
@dataclass
class Database:
    url: str
    label: str
    cleanup_path: Path | None = None
    drop_schema: str | None = None


def make_database(backend: str, override: str | None, tmp: Path) -> Database:
    if backend == "sqlite":
        if override and override.startswith("sqlite://"):
            path = Path(override.removeprefix("sqlite://").removeprefix("/"))
            if path.exists():
                raise SystemExit(f"{path} exists; the benchmark needs a fresh database")
            return Database(override, str(path), cleanup_path=path)
        path = tmp / "bench.db"
        return Database(f"sqlite:///{path}", str(path), cleanup_path=path)
    base = override if override and override.startswith("postgres") else DEFAULT_POSTGRES
    dsn, schema = split_schema(base)
    if schema:
        raise SystemExit("--database-url must not name a schema: the benchmark makes its own")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in dsn else "?"
    return Database(f"{dsn}{sep}schema={schema}", f"{dsn} schema {schema}", drop_schema=schema)


def open_store(url: str) -> Store:
    store = create_store(url)
    if isinstance(store, PostgresStore):
        store.listen = False  # the submitter needs no wake-ups: skip N notifications
    return store


def remove_files(database: Database) -> None:
    if database.cleanup_path:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{database.cleanup_path}{suffix}").unlink(missing_ok=True)


async def drop_schema(database: Database) -> None:
    if database.drop_schema:
        dsn, _ = split_schema(database.url)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{database.drop_schema}" CASCADE')
        finally:
            await conn.close()


async def run_backend(backend: str, args: argparse.Namespace) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix=f"chronoq-bench-{backend}-"))
    database = make_database(backend, args.database_url, tmp)
    result = Result(backend=backend, database=database.label, tasks=args.tasks,
                    workers=args.workers, concurrency=args.concurrency,
                    in_flight=args.in_flight, poll_seconds=args.poll_seconds,
                    idle_tasks=args.idle_tasks, idle_gap_ms=args.idle_gap_ms)
    say(f"[{backend}] {database.label}")
    store = open_store(database.url)
    await store.open()
    workers = Workers(database.url, args.workers, args.concurrency,
                      poll_seconds=args.poll_seconds, scheduler=args.scheduler, log_dir=tmp)
    try:
        await store.migrate()
        workers.start()
        say(f"  started {args.workers} workers x {args.concurrency}; warming up")
        await warm_up(store, workers, args.workers * args.concurrency)
        await loaded_phase(store, workers, result, args.timeout)
        if args.backlog:
            sqlite_path = database.cleanup_path if backend == "sqlite" else None
            await backlog_phase(store, workers, result, args.timeout, sqlite_path)
        await idle_phase(store, workers, result, args.timeout)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"  FAILED: {result.error}")
    finally:
        result.worker_peak_rss_mib = workers.peak_rss_mib()
        result.worker_exit_codes = workers.stop()
        lines = workers.stderr()
        result.stderr_lines = len(lines)
        result.stderr_sample = _sample(lines, 12)
        await store.close()
        if args.keep:
            say(f"  kept {database.label}; worker logs in {tmp}")
        else:
            await drop_schema(database)
            remove_files(database)
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _sample(lines: list[str], limit: int) -> list[str]:
    """The first ``limit`` distinct lines (ignoring timestamps)."""
    seen: dict[str, str] = {}
    for line in lines:
        key = line.split(" ", 3)[-1] if line.count(" ") >= 3 else line
        seen.setdefault(key[:160], line[:300])
        if len(seen) >= limit:
            break
    return list(seen.values())


# -- output -------------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    headers = ["backend", "N", "KxC", "submit/s", "drain/s", "backlog/s", "loaded p50/p95/p99 ms",
               "idle p50/p95/p99 ms", "worker RSS MiB", "problems"]
    rows = [[
        r.backend, f"{r.tasks:,}", f"{r.workers}x{r.concurrency}", f"{r.submit_rate:,.0f}",
        f"{r.tasks_per_second:,.0f}",
        f"{r.backlog_tasks_per_second:,.0f}" if r.backlog_seconds else "-",
        r.loaded_latency.brief(), r.idle_latency.brief(),
        "/".join(f"{m:.0f}" for m in r.worker_peak_rss_mib) or "-", r.problems,
    ] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    right = {1, 3, 4, 5}
    lines = []
    for cells in [headers, *rows]:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    for r in results:
        notes.append(f"{r.backend}: submit {r.submit_seconds:.2f}s, last completion "
                     f"{r.drain_seconds:.2f}s after the first submit ({r.tail_seconds:.2f}s "
                     f"after the last); backlog drained in {r.backlog_seconds:.2f}s; "
                     f"idle: {r.idle_latency.count} tasks {r.idle_gap_ms:g} ms apart")
        notes += [f"  {line}" for line in r.stderr_sample]
    return "\n".join([*(line.rstrip() for line in lines), "", *notes])


def environment() -> dict[str, Any]:
    return {"chronoq": chronoq.__version__, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
            "platform": platform.platform()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Submit N no-op tasks, drain them with K worker processes, and report "
                    "tasks/s and submit→start latency for SQLite and PostgreSQL.")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("-n", "--tasks", type=int, default=10_000,
                        help="tasks in the loaded phase (default 10000)")
    parser.add_argument("-k", "--workers", type=int, default=2,
                        help="worker processes (default 2)")
    parser.add_argument("-c", "--concurrency", type=int, default=16,
                        help="tasks each worker runs at once (default 16)")
    parser.add_argument("--in-flight", type=int, default=32,
                        help="concurrent submissions in the loaded phase (default 32)")
    parser.add_argument("--no-backlog", dest="backlog", action="store_false",
                        help="skip the backlog phase (pause workers, submit N, resume)")
    parser.add_argument("--idle-tasks", type=int, default=200,
                        help="tasks in the idle-latency phase; 0 skips it (default 200)")
    parser.add_argument("--idle-gap-ms", type=float, default=10.0,
                        help="pause between idle-phase submissions (default 10)")
    parser.add_argument("--poll-seconds", type=float, default=None,
                        help="CHRONOQ_POLL_SECONDS for the workers (default: chronoq's, 1 s)")
    parser.add_argument("--database-url",
                        help="postgresql://… server and database to create the bench schema "
                             f"in (default {DEFAULT_POSTGRES}), or sqlite:///new-file.db")
    parser.add_argument("--scheduler", action="store_true",
                        help="also run a `chronoq scheduler` process (not needed: every "
                             "task is due at once)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up waiting for a phase to finish after this many seconds")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database/schema and worker logs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.workers < 1 or args.concurrency < 1 or args.in_flight < 1:
        parser.error("--tasks, --workers, --concurrency and --in-flight must be positive")
    return args


async def main_async(args: argparse.Namespace) -> list[Result]:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    return [await run_backend(backend, args) for backend in backends]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(main_async(args))
    if args.json:
        doc = {"environment": environment(), "results": [asdict(r) for r in results]}
        print(json.dumps(doc, indent=2))
    else:
        env = environment()
        print(f"chronoq {env['chronoq']}, Python {env['python']}, SQLite {env['sqlite']}, "
              f"{env['cpus']} CPUs\n")
        print(table(results), flush=True)
    return 1 if any(r.error or r.timed_out for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
