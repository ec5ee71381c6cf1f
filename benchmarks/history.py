"""History benchmark: chronoq on a PostgreSQL database holding millions of finished tasks.

Run from the repository root (worker processes import ``benchmarks.schedule_app``)::

    python benchmarks/history.py                 # 10,000,000 finished tasks (the issue's size)
    python benchmarks/history.py --quick         # 1,000,000: a shared or small machine
    python benchmarks/history.py --finished 3000000 --expired 1000000
    python benchmarks/history.py --quick --only endpoints --keep   # the read endpoints only
    python benchmarks/history.py --only endpoints --schema bench_1a2b3c4d5e   # again, kept

Two fresh schemas ``bench_<random>`` are made and dropped at the end (unless ``--keep``):
one empty, one loaded with ``COPY`` with ``--finished`` finished tasks (one attempt each;
97 % succeeded, 2 % dead, 1 % cancelled, over 8 queues and 20 handler names, finished over
the last 7 days) of which ``--expired`` succeeded ones finished 8-14 days ago (past the
default 7-day retention), plus ``--queued`` queued tasks in a queue no worker serves.
Then, with 2 worker processes and a scheduler on each schema in turn:

``tasks/s``
    end to end: ``--burst`` tasks submitted at once (``create_tasks``, 500 per statement)
    until the last one finished, empty vs loaded (the goal: within 10 %).
``idle submit->start``
    ``--idle`` tasks submitted one at a time, 20 ms apart: from the submission's
    ``created_at`` to the handler's start (``bench.now`` returns ``time.time()``), p50
    empty vs loaded.
``endpoints``
    on the loaded schema, once the loaded history is rolled up (what the first
    ``GET /v1/queues`` on a database upgraded to migration 0024 starts in the background,
    timed here as ``rollup_s``), a ``chronoq api`` process answers ``--rounds`` rounds of:
    ``GET /v1/queues`` (the counts of chronoq.store.counts), the overview's other read
    ``GET /v1/workers``, ``/metrics`` (rounds are 1.1 s apart so every scrape reads the
    store), filtered ``GET /v1/tasks`` pages (the first and the one after it), and the
    history charts ``GET /v1/history`` (1 h, 24 h, 7 d) and ``/v1/history/durations``
    (1 h, 24 h). p50/p99 as the client saw them (goal: p99 < 50 ms each).
``purge``
    ``--rate`` tasks/s submitted for ``--seconds`` without, then with, a purge of the
    expired tasks (``chronoq.retention.purge``, batches of ``--purge-batch``, default
    1,000 as ``chronoq purge``): rows/s (goal >= 50,000) and those tasks' submit->start
    p99 in both windows (goal: with < 2x without).

``--only purge`` (repeatable: ``--only hot --only endpoints``) runs one phase (after the
load and the rollup, which every phase needs).

The machine matters: every figure here shares the CPUs with the workers, the scheduler,
PostgreSQL and whatever else runs; quote medians of several runs and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    DEFAULT_POSTGRES,
    ChronoqProcesses,
    Database,
    Percentiles,
    drop_schema,
    fetch,
    postgres_database,
    say,
)
from chronoq.models import TaskCreate  # noqa: E402
from chronoq.store import Store, counts, create_store  # noqa: E402

APP = "benchmarks.schedule_app:app"
TASK = "bench.tick"
#: returns when it started: submit->start is ``result - created_at`` (hand-offs included)
NOW = "bench.now"
DAY = 86400.0
QUEUES = [f"q{i}" for i in range(8)]
NAMES = [f"report.job{i}" for i in range(20)]
#: the queue holding the queued backlog: no worker serves it
BACKLOG = "backlog"
TASK_COLUMNS = (
    "id",
    "name",
    "queue",
    "status",
    "payload",
    "run_at",
    "created_at",
    "updated_at",
    "attempts",
    "max_attempts",
    "backoff",
    "worker_id",
    "result",
    "error",
)
ATTEMPT_COLUMNS = ("task_id", "attempt", "worker_id", "started_at", "finished_at", "outcome")
PHASES = ("hot", "endpoints", "purge")
BACKOFF = '{"base": 1.0, "factor": 2.0, "max": 300.0, "jitter": 0.1}'


def uuid7(at: float, rng: random.Random) -> str:
    """A UUIDv7 text for a task created at ``at`` (ids sort by creation time)."""
    bits = rng.getrandbits(74)
    value = (int(at * 1000) << 80) | (7 << 76) | ((bits >> 62) << 64) | (2 << 62)
    return str(uuid.UUID(int=value | (bits & ((1 << 62) - 1))))


def finished_rows(
    n: int, expired: int, now: float, seed: int
) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(task row, attempt row) of ``n`` finished tasks, ``expired`` of them succeeded
    8-14 days ago, the rest finished within the last 7 days (a minute before ``now`` at
    the latest)."""
    rng = random.Random(seed)
    for i in range(n):
        if i < expired:
            done, status = now - rng.uniform(8 * DAY, 14 * DAY), "succeeded"
        else:
            done = now - rng.uniform(60.0, 7 * DAY)
            roll = rng.random()
            status = "succeeded" if roll < 0.97 else "dead" if roll < 0.99 else "cancelled"
        run = rng.expovariate(1 / 0.2)
        wait = rng.expovariate(1 / 0.05)
        started = done - run
        created = started - wait
        task_id = uuid7(created, rng)
        outcome = {"succeeded": "succeeded", "dead": "failed", "cancelled": "cancelled"}[status]
        yield (
            (
                task_id,
                NAMES[i % len(NAMES)],
                QUEUES[rng.randrange(len(QUEUES))],
                status,
                "{}",
                created,
                created,
                done,
                1,
                1,
                BACKOFF,
                "w1",
                '{"ok": true}' if status == "succeeded" else None,
                "boom" if status == "dead" else None,
            ),
            (task_id, 1, "w1", started, done, outcome),
        )


async def load(url: str, schema: str, args: argparse.Namespace) -> dict[str, float]:
    """COPY the finished tasks with their attempts and the queued backlog; VACUUM ANALYZE."""
    import asyncpg

    from chronoq.store.postgres import split_schema

    dsn, _ = split_schema(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    now = time.time()
    t0 = time.perf_counter()
    try:
        chunk = 200_000
        rows = finished_rows(args.finished, args.expired, now, seed=18)
        done = 0
        while done < args.finished:
            tasks, attempts = [], []
            for task, attempt in rows:
                tasks.append(task)
                attempts.append(attempt)
                if len(tasks) == chunk:
                    break
            await conn.copy_records_to_table("tasks", records=tasks, columns=TASK_COLUMNS)
            await conn.copy_records_to_table("attempts", records=attempts, columns=ATTEMPT_COLUMNS)
            done += len(tasks)
            if done % 1_000_000 < chunk:
                say(f"  loaded {done:,} finished tasks ({time.perf_counter() - t0:.0f} s)")
        rng = random.Random(19)
        queued = (0, 1, BACKOFF, None, None, None)
        backlog = [
            (uuid7(now - 60, rng), TASK, BACKLOG, "queued", "{}", *[now - 60] * 3, *queued)
            for _ in range(args.queued)
        ]
        await conn.copy_records_to_table("tasks", records=backlog, columns=TASK_COLUMNS)
        copied = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE tasks")
        await conn.execute("VACUUM ANALYZE attempts")
        size = await conn.fetchval(
            "SELECT pg_total_relation_size('tasks') + pg_total_relation_size('attempts')"
        )
    finally:
        await conn.close()
    return {
        "copy_s": round(copied, 1),
        "vacuum_s": round(time.perf_counter() - t0 - copied, 1),
        "size_mib": round(size / 2**20),
    }


async def wait_workers(store: Store, procs: ChronoqProcesses, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs.check_alive()
        rows = await fetch(store, "SELECT COUNT(*) AS n FROM workers WHERE status = 'alive'")
        if int(rows[0]["n"]) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("workers did not register within 60 s")


async def wait_finished(store: Store, ids: Sequence[str], limit: float) -> float:
    """Wait until every task of ``ids`` finished; returns when (epoch seconds)."""
    deadline = time.monotonic() + limit
    while True:
        rows = await fetch(
            store,
            "SELECT count(*) AS n, max(updated_at) AS last FROM tasks WHERE id = ANY($1) "
            "AND status IN ('succeeded', 'dead', 'cancelled')",
            list(ids),
        )
        if int(rows[0]["n"]) == len(ids):
            return float(rows[0]["last"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids) - int(rows[0]['n'])} tasks unfinished")
        await asyncio.sleep(0.05)


async def start_lags(store: Store, ids: Sequence[str]) -> list[float]:
    rows = await fetch(
        store,
        "SELECT result::float8 - created_at AS lag FROM tasks WHERE id = ANY($1)",
        list(ids),
    )
    return [float(r["lag"]) for r in rows]


async def hot_path(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end tasks/s of a burst and idle submit->start of single submissions."""
    spec = TaskCreate(name=NOW, max_attempts=1)
    for _ in range(20):  # warm the workers' connections and statements
        await store.create_task(spec, time.time())
    ids: list[str] = []
    for _ in range(args.idle):
        task, _ = await store.create_task(spec, time.time())
        ids.append(task.id)
        await asyncio.sleep(0.02)
    await wait_finished(store, ids, 60)
    idle = Percentiles.of(await start_lags(store, ids))
    burst: list[str] = []
    t0 = time.time()
    for first in range(0, args.burst, 500):
        made = await store.create_tasks([spec] * min(500, args.burst - first), time.time())
        burst += [t.id for t, _ in made]
    last = await wait_finished(store, burst, 300)
    return {
        "tasks_per_s": round(args.burst / (last - t0)),
        "idle_p50_ms": idle.p50_ms,
        "idle_p99_ms": idle.p99_ms,
    }


async def measured(
    db: Database, args: argparse.Namespace, log_dir: Path, label: str
) -> dict[str, Any]:
    """The hot-path figures on ``db`` with 2 workers and a scheduler of its own."""
    store = create_store(db.url)
    await store.open()
    env = {**os.environ, "CHRONOQ_DATABASE_URL": db.url, "CHRONOQ_RETENTION": "off"}
    env.pop("CHRONOQ_APP", None)
    procs = ChronoqProcesses(env, log_dir / label)
    (log_dir / label).mkdir(exist_ok=True)
    try:
        for i in range(args.workers):
            procs.spawn(f"worker-{i}", ["worker", "--app", APP, "--concurrency", "64"])
        procs.spawn("scheduler", ["scheduler"])
        await wait_workers(store, procs, args.workers)
        runs = [await hot_path(store, args) for _ in range(args.repeat)]
        say(f"  {label}: {runs}")
        return {
            "tasks_per_s": sorted(r["tasks_per_s"] for r in runs)[len(runs) // 2],
            "idle_p50_ms": sorted(r["idle_p50_ms"] for r in runs)[len(runs) // 2],
            "runs": runs,
        }
    finally:
        procs.stop()
        await store.close()


async def endpoints(db: Database, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """p50/p99 of the read endpoints, as a client of a ``chronoq api`` process sees them."""
    import httpx

    port = 18000 + random.randrange(1000)
    env = {**os.environ, "CHRONOQ_DATABASE_URL": db.url, "CHRONOQ_RETENTION": "off"}
    env.update(CHRONOQ_AUTH="false")  # loopback only
    env.pop("CHRONOQ_APP", None)
    procs = ChronoqProcesses(env, log_dir / "api")
    (log_dir / "api").mkdir(exist_ok=True)
    procs.spawn("api", ["api", "--host", "127.0.0.1", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    paths = {
        "queues": "/v1/queues",
        "workers (overview)": "/v1/workers",
        "metrics": "/metrics",
        "tasks status=succeeded": "/v1/tasks?status=succeeded&limit=50",
        "tasks status=dead queue=q3": "/v1/tasks?status=dead&queue=q3&limit=50",
        "tasks queue=q5": "/v1/tasks?queue=q5&limit=50",
        "tasks name=report.job7": "/v1/tasks?name=report.job7&limit=50",
        "tasks status=dead name=report.job7": "/v1/tasks?status=dead&name=report.job7&limit=50",
        "history 1h": "/v1/history?window=1h",
        "history 24h by queue": "/v1/history?window=24h&by=queue",
        "history 7d": "/v1/history?window=7d",
        "durations 1h": "/v1/history/durations?window=1h",
        "durations 24h": "/v1/history/durations?window=24h",
        "durations 7d": "/v1/history/durations?window=7d",
    }
    timings: dict[str, list[float]] = {k: [] for k in paths}
    timings.update({k + " (next page)": [] for k in paths if k.startswith("tasks")})
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                procs.check_alive()
                try:
                    if (await http.get("/v1/queues")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the API did not answer within 60 s")
                await asyncio.sleep(0.2)
            for path in paths.values():  # warm-up
                (await http.get(path)).raise_for_status()
            for _ in range(args.rounds):
                started = time.monotonic()
                for k, path in paths.items():
                    t0 = time.perf_counter()
                    answer = await http.get(path)
                    timings[k].append(time.perf_counter() - t0)
                    answer.raise_for_status()
                    if k.startswith("tasks"):
                        page = answer.json()
                        cursor = page.get("next_cursor") if isinstance(page, dict) else None
                        if cursor:
                            t0 = time.perf_counter()
                            more = await http.get(f"{path}&cursor={cursor}")
                            timings[k + " (next page)"].append(time.perf_counter() - t0)
                            more.raise_for_status()
                await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - started)))
    finally:
        procs.stop()
    return {k: Percentiles.of(v).__dict__ for k, v in timings.items() if v}


async def purge_under_load(db: Database, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Submit ``--rate`` tasks/s without and with a purge of the expired tasks."""
    from chronoq import retention

    store = create_store(db.url)
    purger = create_store(db.url)
    await store.open()
    await purger.open()
    env = {**os.environ, "CHRONOQ_DATABASE_URL": db.url, "CHRONOQ_RETENTION": "off"}
    env.pop("CHRONOQ_APP", None)
    procs = ChronoqProcesses(env, log_dir / "purge")
    (log_dir / "purge").mkdir(exist_ok=True)
    spec = TaskCreate(name=NOW, max_attempts=1)

    async def submit(seconds: float) -> list[str]:
        ids: list[str] = []
        per_tick = max(1, args.rate // 20)
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds:
            made = await store.create_tasks([spec] * per_tick, time.time())
            ids += [t.id for t, _ in made]
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * 0.05 - time.monotonic()))
        return ids

    try:
        for i in range(args.workers):
            procs.spawn(f"worker-{i}", ["worker", "--app", APP, "--concurrency", "64"])
        procs.spawn("scheduler", ["scheduler"])
        await wait_workers(store, procs, args.workers)
        await submit(2.0)  # warm-up
        quiet = await submit(args.seconds)
        await wait_finished(store, quiet, 120)
        without = Percentiles.of(await start_lags(store, quiet))
        say(f"  without purge: submit->start {without.brief()}")
        policy = retention.Policy.parse(retention.DEFAULT)
        queues = await retention.queues_by_status(purger)
        expired = policy.expired(queues, time.time())
        t0 = time.perf_counter()
        ended: list[float] = []

        async def timed() -> retention.Progress:
            # the purge's own end: the submissions below run in chunks and end later
            try:
                return await retention.purge(purger, expired, batch=args.purge_batch)
            finally:
                ended.append(time.perf_counter())

        job = asyncio.create_task(timed())
        busy: list[str] = []
        while not job.done():
            busy += await submit(min(args.seconds, 0.5))
        progress = await job
        submitted_s = time.perf_counter() - t0
        purge_s = ended[0] - t0
        await wait_finished(store, busy, 120)
        during = Percentiles.of(await start_lags(store, busy))
        say(f"  purged {progress.total:,} in {purge_s:.2f} s; submit->start {during.brief()}")
        return {
            "purged": progress.total,
            "purge_s": round(purge_s, 2),
            "rows_per_s": round(progress.total / purge_s),
            "without_p99_ms": without.p99_ms,
            "with_p99_ms": during.p99_ms,
            "submitted_per_s": round(len(busy) / submitted_s),
        }
    finally:
        procs.stop()
        await store.close()
        await purger.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="chronoq-history-"))
    empty, loaded = postgres_database(args.database_url), postgres_database(args.database_url)
    reused = args.schema is not None
    if reused:  # a schema an earlier run loaded and kept: measured as it is, never dropped
        loaded.url = loaded.url.replace(f"schema={loaded.schema}", f"schema={args.schema}")
        loaded.schema = args.schema
    made = [empty, loaded] if "hot" in args.only else [loaded]
    if reused:
        made.remove(loaded)
    out: dict[str, Any] = {
        "finished": args.finished,
        "expired": args.expired,
        "queued": args.queued,
        "load_avg_start": os.getloadavg()[0],
        "schema": loaded.schema,
    }
    try:
        for db in made:
            store = create_store(db.url)
            await store.open()
            await store.migrate()
            await store.close()
        assert loaded.schema is not None
        if reused:
            out["load"] = {"reused": loaded.schema}
        else:
            say(f"loading {args.finished:,} finished tasks into {loaded.schema}")
            out["load"] = await load(loaded.url, loaded.schema, args)
            say(f"  {out['load']}")
        # every phase after the rollup: a scheduler leader would otherwise start it in the
        # background, and its pieces (each holding the mark row) would stall the purge,
        # whose counts trigger reads the mark FOR SHARE
        store = create_store(loaded.url)
        await store.open()
        t0 = time.perf_counter()
        rolled = await counts.advance(store, time.time(), min_rows=1)
        out["load"]["rollup_s"] = round(time.perf_counter() - t0, 1)
        await store.close()
        say(f"  rolled {rolled:,} finished tasks up in {out['load']['rollup_s']} s")
        if "hot" in args.only:
            say("hot path: empty, then loaded")
            out["empty"] = await measured(empty, args, log_dir, "empty")
            out["loaded"] = await measured(loaded, args, log_dir, "loaded")
        if "endpoints" in args.only:
            say("endpoints on the loaded schema")
            out["endpoints"] = await endpoints(loaded, args, log_dir)
        if "purge" in args.only:
            say("purge while tasks run")
            out["purge"] = await purge_under_load(loaded, args, log_dir)
        out["load_avg_end"] = os.getloadavg()[0]
    finally:
        if not args.keep:
            for db in made:
                assert db.schema is not None
                await drop_schema(args.database_url, db.schema)
            shutil.rmtree(log_dir, ignore_errors=True)
    return out


def report(out: dict[str, Any]) -> str:
    lines = [
        f"{out['finished']:,} finished + {out['queued']:,} queued tasks (PostgreSQL, schema "
        f"{out['schema']}), load {out['load']}; load average {out['load_avg_start']:.2f} -> "
        f"{out['load_avg_end']:.2f}",
    ]
    if "empty" in out:
        e, lo = out["empty"], out["loaded"]
        lines += [
            f"tasks/s end to end        empty {e['tasks_per_s']:,}  loaded "
            f"{lo['tasks_per_s']:,}  ratio {lo['tasks_per_s'] / e['tasks_per_s']:.2f}",
            f"idle submit->start p50 ms empty {e['idle_p50_ms']:.2f}  loaded "
            f"{lo['idle_p50_ms']:.2f}  ratio {lo['idle_p50_ms'] / e['idle_p50_ms']:.2f}",
        ]
    if "endpoints" in out:
        lines.append("endpoint                                   p50 ms   p99 ms   (goal p99 < 50)")
        for k, p in out["endpoints"].items():
            flag = "" if p["p99_ms"] < 50 else "  MISSED"
            lines.append(f"  {k:<40} {p['p50_ms']:7.1f}  {p['p99_ms']:7.1f}{flag}")
    if "purge" not in out:
        return "\n".join(lines)
    pg = out["purge"]
    lines.append(
        f"purge: {pg['purged']:,} rows in {pg['purge_s']} s = {pg['rows_per_s']:,} rows/s "
        f"(goal >= 50,000) while {pg['submitted_per_s']} tasks/s ran; submit->start p99 "
        f"{pg['without_p99_ms']:.1f} ms without, {pg['with_p99_ms']:.1f} ms with "
        f"(x{pg['with_p99_ms'] / pg['without_p99_ms']:.2f}, goal < 2)"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--finished", type=int, default=10_000_000)
    p.add_argument("--expired", type=int, default=1_000_000)
    p.add_argument("--queued", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="1,000,000 finished, 300,000 expired")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--burst", type=int, default=5000)
    p.add_argument("--idle", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3, help="hot-path runs per schema (median)")
    p.add_argument("--rounds", type=int, default=40, help="endpoint rounds, 1.1 s apart")
    p.add_argument("--rate", type=int, default=1000, help="tasks/s beside the purge")
    p.add_argument("--seconds", type=float, default=10.0, help="the window without purge")
    p.add_argument("--purge-batch", type=int, default=1000, help="rows per purge batch")
    p.add_argument(
        "--database-url", default=os.environ.get("CHRONOQ_BENCH_POSTGRES", DEFAULT_POSTGRES)
    )
    p.add_argument(
        "--only",
        action="append",
        choices=PHASES,
        help="run only this phase (repeatable; default: all)",
    )
    p.add_argument("--keep", action="store_true", help="keep the schemas (to run again)")
    p.add_argument("--schema", help="measure a schema an earlier --keep run loaded")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.finished, args.expired = 1_000_000, 300_000
    args.only = args.only or list(PHASES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2) if args.json else report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
