"""Helpers shared by the benchmark scripts and the apps their worker processes load.

The peer apps (``celery_app.py``, ``rq_tasks.py``) import this module in Celery's and RQ's
worker processes, so at module level it imports the standard library only: redis, asyncpg
and chronoq are imported where they are used. The scripts import it as
``benchmarks.common``, after putting the repository root on ``sys.path``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import redis

    from chronoq.store import Store

#: the repository root: the working directory of every worker process the scripts start
REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
#: where ``bench.stamp`` records when a handler started (every system's, see compare.py)
DEFAULT_STAMPS = "redis://127.0.0.1:6379/11"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    """Progress, to stderr (stdout is for the results)."""
    print(message, file=sys.stderr, flush=True)


# -- figures ------------------------------------------------------------------------------------
def ms(value: float) -> str:
    """A duration in milliseconds: whole from 100 ms on, one decimal below."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


@dataclass
class Percentiles:
    """p50/p95/p99, max and min of a set of durations, in milliseconds."""

    count: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    min_ms: float | None = None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Self:
        if not seconds:
            return cls()
        values = sorted(s * 1000.0 for s in seconds)
        if len(values) == 1:
            return cls(1, values[0], values[0], values[0], values[0], values[0])
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), cuts[49], cuts[94], cuts[98], values[-1], values[0])

    def brief(self, *, maximum: bool = True) -> str:
        """``p50 / p95 / p99 / max`` (without max when not ``maximum``), ``-`` if empty."""
        if self.p50_ms is None:
            return "-"
        parts = [self.p50_ms, self.p95_ms, self.p99_ms] + ([self.max_ms] if maximum else [])
        return " / ".join(ms(p) for p in parts if p is not None)


# -- processes ----------------------------------------------------------------------------------
def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (state) on; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, reaped: bool = True) -> float:
    """utime+stime of ``pid`` (plus its reaped children's with ``reaped``); 0 when gone."""
    fields = proc_stat(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def peak_rss_kib(pid: int) -> int | None:
    """``VmHWM`` (peak resident set) of a live process, in KiB; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def tail(path: Path, n: int) -> str:
    """The last ``n`` lines of a log file ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def environ_without_chronoq() -> dict[str, str]:
    """This process's environment without any ``CHRONOQ_*`` variable, so that nothing from
    the caller's chronoq settings leaks into the measured processes."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CHRONOQ_")}


class ChronoqProcesses:
    """``python -m chronoq.cli ... --log-level warning`` processes (workers, a scheduler)
    run from the repository root with ``env``, each with its stderr in
    ``<log_dir>/<label>.stderr``."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._files: list[IO[bytes]] = []

    def spawn(self, label: str, args: list[str]) -> None:
        log = self.log_dir / f"{label}.stderr"
        handle = log.open("wb")
        self._files.append(handle)
        self.logs.append(log)
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "chronoq.cli", *args, "--log-level", "warning"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=handle,
            )
        )

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` with the tail of its log if a process exited."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{log.stem} (pid {proc.pid}) exited with code {code}:\n" + tail(log, 15)
                )

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        """SIGCONT+SIGTERM everything, wait, SIGKILL what is left; every exit code."""
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
        return [proc.returncode for proc in self.procs]

    def stderr(self) -> list[str]:
        """Every non-blank line the processes wrote to stderr, as ``label: line``."""
        return [
            f"{log.stem}: {line}"
            for log in self.logs
            for line in log.read_text(errors="replace").splitlines()
            if line.strip()
        ]


# -- databases ----------------------------------------------------------------------------------
@dataclass
class Database:
    """A fresh database for one run: a SQLite file, or a new schema on PostgreSQL."""

    url: str
    label: str
    #: SQLite: the database file
    path: Path | None = None
    #: PostgreSQL: the schema made for the run, to drop at the end
    schema: str | None = None


def sqlite_database(path: Path, url: str | None = None) -> Database:
    return Database(url or f"sqlite:///{path}", str(path), path=path)


def postgres_database(base_url: str) -> Database:
    """A new schema ``bench_<random>`` (``?schema=`` URL option) on the server and database
    of ``base_url``, which must not name a schema itself. The schema is created when a
    store on the URL migrates."""
    from chronoq.store.postgres import split_schema

    dsn, schema = split_schema(base_url)
    if schema:
        raise SystemExit("--database-url must not name a schema: the benchmark makes its own")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in dsn else "?"
    return Database(f"{dsn}{sep}schema={schema}", f"{dsn} schema {schema}", schema=schema)


async def drop_schema(url: str, schema: str) -> None:
    """``DROP SCHEMA ... CASCADE`` on the server and database of ``url``."""
    import asyncpg

    from chronoq.store.postgres import split_schema

    dsn, _ = split_schema(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def fetch(store: Store, sql: str, *args: Any) -> list[Any]:
    async with store.conn() as c:
        return list(await c.fetch(sql, *args))


# -- CPU-bound work ------------------------------------------------------------------------------
def burn(n: int) -> int:
    """Pure-Python CPU work: ``n`` loop iterations (the GIL held throughout)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def burn_iterations(seconds: float) -> int:
    """How many :func:`burn` iterations take ``seconds`` on this machine (best of 5)."""
    probe = 200_000
    best = min(_timed(burn, probe) for _ in range(5))
    return max(1, round(probe * seconds / best))


def _timed(fn: Any, arg: Any) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


# -- the peer apps' start stamps ------------------------------------------------------------------
_stamps: redis.Redis | None = None


def stamps() -> redis.Redis:
    """This process's client for the stamps database, ``BENCH_STAMPS_URL`` (made on first
    use: in a Celery prefork child, after the fork)."""
    global _stamps
    if _stamps is None:
        import redis

        _stamps = redis.Redis.from_url(os.environ.get("BENCH_STAMPS_URL", DEFAULT_STAMPS))
    return _stamps
