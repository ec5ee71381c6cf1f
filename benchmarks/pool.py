"""The cost and the gain of isolation: chronoq's process pool beside Celery prefork.

Run from the repository root (the workers import modules of ``benchmarks/``)::

    python benchmarks/pool.py                       # table on stdout
    python benchmarks/pool.py --repeat 3 --json-out pool.json

Systems (``--systems``), each with 2 processes' worth of handlers (``--processes``):

* ``chronoq-process``: one ``chronoq worker --pool process --processes 2`` (PostgreSQL
  store, its default broker) + ``chronoq scheduler``: handlers in 2 child processes;
* ``chronoq-async``: one ``chronoq worker`` (the async pool: async handlers on its loop,
  sync ones in its threads, one GIL) + ``chronoq scheduler``;
* ``celery-prefork``: ``celery worker -P prefork -c 2`` on Redis with no result backend
  and ``--prefetch-multiplier 256`` (``celery_pool_app.py``): its fastest honest setup.

Phases per system, in turn (``--repeat R`` rounds, medians printed):

1. **CPU-bound**: ``--cpu-tasks`` tasks of ``--cpu-ms`` of pure-Python work (a loop
   calibrated on this machine before the run, the same iteration count for everyone):
   tasks/s from the first enqueue to the last completion;
2. **no-op end to end**: ``--tasks`` no-op tasks, tasks/s the same way;
3. **idle submit->start**: ``--latency-tasks`` tasks one by one at ``--latency-rate``/s,
   each handler stamps its start time in Redis: p50 and p99;
4. **peak RSS** (``VmHWM``) summed over the worker process and all its children.

chronoq enqueues through ``App`` with 64 calls in flight (its group commit), Celery with
``.delay()`` one at a time (its client is synchronous). Completion times: chronoq's
``attempts.finished_at``; Celery's last ``task_postrun`` time (one pipelined ``INCR``/``SET``
per task, the only per-task write it does). Redis DB 13 (Celery's broker) and 14 (stamps
and counters) are flushed before and after each turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import compare  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DEFAULT_POSTGRES,
    Percentiles,
    burn_iterations,
    cpu_seconds,
    say,
)
from benchmarks.compare import (  # noqa: E402
    BenchError,
    Processes,
    descendants,
    flush,
    system_env,
    wait_quiet,
)

SYSTEMS = ("chronoq-process", "chronoq-async", "celery-prefork")
DB = {"celery": 13, "stamps": 14}
CPU_SPLIT = (
    "worker",
    "worker_waited",
    "children",
    "children_waited",
    "others",
    "client",
    "postgres",
    "machine",
)


@dataclass
class Result:
    system: str
    layout: str = ""
    cpu_per_second: float | None = None
    noop_per_second: float | None = None
    latency: Percentiles = field(default_factory=Percentiles)
    peak_rss_mib: float | None = None
    #: CPU seconds used during the CPU-bound phase: worker processes (parents), their
    #: children, the other spawned processes (scheduler), the whole machine; and the wall
    cpu_split: dict[str, float] = field(default_factory=dict)
    processes: int = 0
    load_average: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class System:
    """Start the workers, enqueue, count completions, read the last completion time."""

    name = ""

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.env = system_env(args.stamps_url)
        self.procs = Processes(log_dir, self.env)

    async def setup(self) -> None: ...
    async def teardown(self) -> None: ...
    def start(self) -> str:
        raise NotImplementedError

    async def enqueue(self, what: str, count: int, **payload: Any) -> None:
        raise NotImplementedError

    async def done(self) -> int:
        raise NotImplementedError

    async def last_finish(self) -> float:
        raise NotImplementedError


class Chronoq(compare.Chronoq):
    """compare.py's chronoq on PostgreSQL (its own schema, App, connection), with one
    worker of either pool."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, pool: str) -> None:
        super().__init__(args, log_dir, broker=False)
        self.name = f"chronoq-{pool}"
        self.pool = pool

    def start(self) -> str:
        base = [sys.executable, "-m", "chronoq.cli"]
        k = str(self.args.processes)
        pool = (
            ["--pool", "process", "--processes", k]
            if self.pool == "process"
            else ["--concurrency", str(self.args.async_concurrency)]
        )
        self.procs.spawn(
            "worker",
            [
                *base,
                "worker",
                "--app",
                "benchmarks.chronoq_app:app",
                *pool,
                "--log-level",
                "warning",
            ],
        )
        self.procs.spawn("scheduler", [*base, "scheduler", "--log-level", "warning"], worker=False)
        if self.pool == "process":
            return f"1 worker + {k} child processes (--pool process) + scheduler"
        return (
            f"1 worker, {self.args.async_concurrency} async slots (sync handlers in "
            "threads) + scheduler"
        )

    async def enqueue(self, what: str, count: int, **payload: Any) -> None:
        fn = getattr(self.mod, what)
        lanes = max(1, min(64, count))

        async def lane(count: int) -> None:
            for _ in range(count):
                await fn.adelay(**payload)

        share, extra = divmod(count, lanes)
        await asyncio.gather(*(lane(share + (i < extra)) for i in range(lanes)))

    async def done(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT COUNT(*) FROM tasks WHERE status IN ('succeeded', 'dead')"
            )
        )

    async def last_finish(self) -> float:
        return float(await self.conn.fetchval("SELECT MAX(finished_at) FROM attempts"))


class Celery(System):
    name = "celery-prefork"

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        super().__init__(args, log_dir)
        self.env["BENCH_CELERY_BROKER"] = f"{args.redis}/{DB['celery']}"

    async def setup(self) -> None:
        import redis

        os.environ["BENCH_CELERY_BROKER"] = self.env["BENCH_CELERY_BROKER"]
        os.environ["BENCH_STAMPS_URL"] = self.args.stamps_url
        from benchmarks import celery_pool_app

        self.mod = celery_pool_app
        self.redis = redis.Redis.from_url(self.args.stamps_url)

    async def teardown(self) -> None:
        self.mod.app.close()
        self.redis.close()

    def start(self) -> str:
        k = str(self.args.processes)
        self.procs.spawn(
            "prefork",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.celery_pool_app",
                "worker",
                "-P",
                "prefork",
                "-c",
                k,
                "--prefetch-multiplier",
                "256",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"pool-{uuid.uuid4().hex[:6]}@%h",
            ],
        )
        return f"1 prefork parent + {k} children, no result backend, prefetch 256"

    async def enqueue(self, what: str, count: int, **payload: Any) -> None:
        task = getattr(self.mod, what)
        for _ in range(count):
            task.delay(**payload)

    async def done(self) -> int:
        return int(self.redis.get(self.mod.DONE) or 0)

    async def last_finish(self) -> float:
        return float(self.redis.get(self.mod.LAST) or 0)


def make(name: str, args: argparse.Namespace, log_dir: Path) -> System:
    if name == "celery-prefork":
        return Celery(args, log_dir)
    return Chronoq(args, log_dir, pool=name.removeprefix("chronoq-"))


async def wait_done(system: System, target: int, timeout: float, what: str) -> None:
    """Poll the count of finished tasks every ``--poll`` seconds: the rate comes from the
    recorded finish times, so polling more often only costs CPU the systems need (chronoq's
    count is a PostgreSQL query, on the cores the process pool wants)."""
    deadline = time.monotonic() + timeout
    while (done := await system.done()) < target:
        system.procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: {done}/{target} done after {timeout:.0f}s")
        await asyncio.sleep(system.args.poll)


async def rate(system: System, what: str, count: int, **payload: Any) -> float:
    """Tasks/s from the first enqueue to the last completion of ``count`` tasks ``what``."""
    base = await system.done()
    first = time.time()
    await system.enqueue(what, count, **payload)
    await wait_done(system, base + count, system.args.timeout, what)
    return count / (await system.last_finish() - first)


def cpu_split(procs: Processes) -> dict[str, float]:
    """CPU seconds so far of the worker parents, their children (live and reaped), the
    other spawned processes, and the machine (``/proc/stat``: PostgreSQL, Redis, this
    client and whatever else runs)."""
    parents = children = others = 0.0
    for _, proc, _, worker in procs.procs:
        if not worker:
            others += cpu_seconds(proc.pid)
            continue
        parents += cpu_seconds(proc.pid, reaped=False)
        children += cpu_seconds(proc.pid) - cpu_seconds(proc.pid, reaped=False)
        children += sum(cpu_seconds(c) for c in descendants(proc.pid))
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "worker": parents,
        "children": children,
        "others": others,
        "client": own.ru_utime + own.ru_stime,
        "postgres": sum(cpu_seconds(pid) for pid in _postgres_pids()),
        "machine": busy / os.sysconf("SC_CLK_TCK"),
    }


def run_queue(pid: int) -> float:
    """Seconds the threads of ``pid`` spent runnable but not running (``schedstat``)."""
    total = 0
    for thread in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((thread / "schedstat").read_text().split()[1])
    return total / 1e9


def _postgres_pids() -> list[int]:
    """Every PostgreSQL server process (its sessions of other clients too)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().startswith("postgres"):
                    pids.append(int(entry.name))
    return pids


async def latency(system: System, stamps: Any) -> Percentiles:
    args = system.args
    key = f"bench:pool:start:{uuid.uuid4().hex[:8]}"
    submitted: dict[str, float] = {}
    t0 = time.monotonic()
    for i in range(args.latency_tasks):
        pause = t0 + i / args.latency_rate - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        submitted[str(i)] = time.time()
        await system.enqueue("stamp", 1, key=key, token=str(i))
    deadline = time.monotonic() + args.timeout
    while stamps.hlen(key) < args.latency_tasks:
        system.procs.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"latency: {stamps.hlen(key)}/{args.latency_tasks} started")
        await asyncio.sleep(0.05)
    started = {k.decode(): float(v) for k, v in stamps.hgetall(key).items()}
    return Percentiles.of([started[t] - submitted[t] for t in submitted])


async def run_system(name: str, args: argparse.Namespace, stamps: Any, iterations: int) -> Result:
    log_dir = Path(tempfile.mkdtemp(prefix=f"chronoq-pool-{name}-"))
    system = make(name, args, log_dir)
    result = Result(system=name)
    if args.quiet_below < 1:
        wait_quiet(args.quiet_below, args.quiet_wait)
    result.load_average.append(round(os.getloadavg()[0], 2))
    flush(args.redis, DB.values())
    set_up = False
    try:
        await system.setup()
        set_up = True
        result.layout = system.start()
        say(f"[{name}] {result.layout}; warming up")
        await rate(system, "whoami", 20 * args.processes)
        result.processes = system.procs.count()
        before, wall = cpu_split(system.procs), time.monotonic()
        parents = [p.pid for p in system.procs.workers]
        children = [c for p in parents for c in descendants(p)]
        queued = {pid: run_queue(pid) for pid in parents + children}
        result.cpu_per_second = await rate(system, "cpu", args.cpu_tasks, n=iterations)
        after = cpu_split(system.procs)
        result.cpu_split = {k: round(after[k] - before[k], 2) for k in after}
        result.cpu_split["wall"] = round(time.monotonic() - wall, 2)
        for key, pids in (("worker_waited", parents), ("children_waited", children)):
            # how long their threads were ready to run but had no core
            waited = sum(run_queue(pid) - queued[pid] for pid in pids)
            result.cpu_split[key] = round(waited, 2)
        say(f"  CPU-bound: {result.cpu_per_second:,.1f} tasks/s; CPU s {result.cpu_split}")
        await asyncio.sleep(0.5)
        result.noop_per_second = await rate(system, "noop", args.tasks)
        say(f"  no-op end to end: {result.noop_per_second:,.0f} tasks/s")
        await asyncio.sleep(1.0)
        result.latency = await latency(system, stamps)
        say(
            f"  idle submit->start p50 {result.latency.p50_ms:.2f} ms, "
            f"p99 {result.latency.p99_ms:.2f} ms"
        )
        result.peak_rss_mib = system.procs.peak_rss_mib()
    except (BenchError, Exception) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        say(f"  FAILED: {exc}")
    finally:
        result.errors += system.procs.stop()
        if set_up:
            await system.teardown()
        flush(args.redis, DB.values())
        result.load_average.append(round(os.getloadavg()[0], 2))
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


ROWS = [
    ("CPU-bound tasks/s", "cpu_per_second", 1),
    ("no-op end-to-end tasks/s", "noop_per_second", 0),
    ("idle submit->start p50 ms", "p50", 2),
    ("idle submit->start p99 ms", "p99", 2),
    ("peak RSS MiB, all processes", "peak_rss_mib", 0),
]


def figure(result: Result, name: str) -> float | None:
    if name in ("p50", "p99"):
        value: float | None = getattr(result.latency, f"{name}_ms")
        return value
    found: float | None = getattr(result, name)
    return found


def median(runs: list[Result]) -> Result:
    merged = Result(
        system=runs[0].system,
        layout=runs[0].layout,
        processes=runs[0].processes,
        errors=[e for r in runs for e in r.errors],
        load_average=[x for r in runs for x in r.load_average],
    )
    for name in ("cpu_per_second", "noop_per_second", "peak_rss_mib"):
        known = [v for r in runs if (v := getattr(r, name)) is not None]
        setattr(merged, name, statistics.median(known) if known else None)
    for name in ("p50_ms", "p99_ms"):
        known = [v for r in runs if (v := getattr(r.latency, name)) is not None]
        setattr(merged.latency, name, statistics.median(known) if known else None)
    for key in {k for r in runs for k in r.cpu_split}:
        known = [r.cpu_split[key] for r in runs if key in r.cpu_split]
        merged.cpu_split[key] = round(statistics.median(known), 2)
    return merged


def table(results: list[Result], runs: list[list[Result]], args: argparse.Namespace) -> str:
    by = {r.system: r for r in results}
    headers = ["figure", *by, "process/celery", "process/async"]
    rows = []
    for label, name, digits in ROWS:
        row = [label, *(_num(figure(r, name), digits) for r in results)]
        process = figure(by["chronoq-process"], name) if "chronoq-process" in by else None
        for other in ("celery-prefork", "chronoq-async"):
            theirs = figure(by[other], name) if other in by else None
            row.append(f"{process / theirs:.2f}x" if process and theirs else "-")
        rows.append(row)
    rows.append(["processes", *(str(r.processes) for r in results), "", ""])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"CPU-bound: {args.cpu_tasks} tasks x {args.cpu_ms:g} ms of pure Python; "
        f"no-op: {args.tasks} tasks; latency: {args.latency_tasks} tasks at "
        f"{args.latency_rate:g}/s.",
    ]
    if len(runs[0]) > 1:
        lines.append(f"medians of {len(runs[0])} runs; per run:")
        for label, name, digits in ROWS[:3]:
            lines.append(
                f"  {label}: "
                + "; ".join(
                    f"{rs[0].system} " + ", ".join(_num(figure(x, name), digits) for x in rs)
                    for rs in runs
                )
            )
    lines.append(
        "CPU seconds during the CPU-bound phase (medians): worker / its threads waiting "
        "for a core / children / children waiting for a core / scheduler / this client / "
        "PostgreSQL (all its sessions) / whole machine, over the phase's wall seconds"
    )
    for r in results:
        split = r.cpu_split
        if split:
            lines.append(
                f"  {r.system}: "
                + " / ".join(_num(split.get(k), 2) for k in CPU_SPLIT)
                + f" over {_num(split.get('wall'), 2)} s"
            )
    for r in results:
        lines.append(f"{r.system}: {r.layout}")
        lines += [f"{r.system}: {e}" for e in r.errors]
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--async-concurrency", type=int, default=8)
    parser.add_argument("--cpu-tasks", type=int, default=1000)
    parser.add_argument("--cpu-ms", type=float, default=20.0)
    parser.add_argument("-n", "--tasks", type=int, default=5000)
    parser.add_argument("--latency-tasks", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between two counts of finished tasks"
    )
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="wait for the machine to be less busy than this first",
    )
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    args.stamps_url = f"{args.redis}/{DB['stamps']}"
    args.workers = args.processes  # what compare.Chronoq reads
    return args


async def main_async(args: argparse.Namespace, iterations: int) -> list[list[Result]]:
    import redis

    stamps = redis.Redis.from_url(args.stamps_url)
    runs: dict[str, list[Result]] = {name: [] for name in args.systems}
    try:
        for round_ in range(args.repeat):
            say(f"== round {round_ + 1} of {args.repeat}")
            for name in args.systems:
                runs[name].append(await run_system(name, args, stamps, iterations))
    finally:
        stamps.close()
    return list(runs.values())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    iterations = burn_iterations(args.cpu_ms / 1000)
    say(f"{args.cpu_ms:g} ms of CPU = {iterations:,} loop iterations here")
    runs = asyncio.run(main_async(args, iterations))
    results = [median(r) for r in runs]
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "iterations": iterations,
                    "results": [asdict(r) for r in results],
                    "runs": [[asdict(x) for x in r] for r in runs],
                },
                indent=2,
            )
            + "\n"
        )
    print(table(results, runs, args), flush=True)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
