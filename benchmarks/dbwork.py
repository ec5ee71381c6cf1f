"""PostgreSQL's work per task, counted rather than timed: statements, rows, shared buffers
touched and WAL bytes per task (``pg_stat_statements``), row versions per table and the
server's CPU, for the workloads of ``compare.py`` run with chronoq alone.

Needs a PostgreSQL server with ``shared_preload_libraries = 'pg_stat_statements'`` (the
benchmark creates the extension) whose processes run on this machine (for the CPU), e.g. a
private cluster::

    initdb -D /tmp/pg -A trust -U postgres
    echo "port = 5499" >> /tmp/pg/postgresql.conf
    echo "shared_preload_libraries = 'pg_stat_statements'" >> /tmp/pg/postgresql.conf
    pg_ctl -D /tmp/pg start && createdb -h 127.0.0.1 -p 5499 -U postgres test
    python -m benchmarks.dbwork --database-url postgresql://postgres@127.0.0.1:5499/test

Phases, on a fresh schema, 2 ``chronoq worker`` processes (16 slots each):

1. ``submit``: N ``adelay()`` calls, 64 in flight, no worker running;
2. ``cold drain``: the workers start and run those N;
3. ``one at a time``: N/5 ``adelay()`` calls one after the other, to idle workers (hand-offs);
4. ``end to end``: N more, 64 in flight, with the workers running;
5. ``drain``: workers paused (SIGSTOP), N enqueued, resumed.

Statement counts and buffers are those of top-level statements (a trigger's statements
are inside their statement's); the figures do not depend on the machine's speed, only on
what the code asks the database to do (batch sizes vary a little from run to run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_seconds, environ_without_chronoq, proc_stat, say  # noqa: E402

COUNTED = ("calls", "rows", "shared_blks_hit", "shared_blks_read", "wal_bytes")


class Snapshot:
    """The counters at one moment."""

    def __init__(self, statements: dict[Any, Any], tables: dict[str, Any], cpu: float) -> None:
        self.statements, self.tables, self.cpu = statements, tables, cpu


async def snapshot(conn: Any, schema: str, postmaster: int) -> Snapshot:
    await asyncio.sleep(1.5)  # backends report table counters once idle for a second
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT queryid, query, " + ", ".join(COUNTED) + " FROM public.pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() "
        "AND toplevel AND query NOT LIKE '%pg_stat%'"
    )
    tables = await conn.fetch(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
        "WHERE schemaname = $1",
        schema,
    )
    cpu = cpu_seconds(postmaster) + sum(
        cpu_seconds(pid, reaped=False) for pid in children(postmaster)
    )
    return Snapshot({r["queryid"]: r for r in rows}, {r["relname"]: dict(r) for r in tables}, cpu)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def per_task(before: Snapshot, after: Snapshot, n: int) -> dict[str, Any]:
    total = dict.fromkeys(COUNTED, 0.0)
    top: list[tuple[float, str, int]] = []
    for key, row in after.statements.items():
        old = before.statements.get(key)
        delta = {c: float(row[c]) - (float(old[c]) if old else 0.0) for c in COUNTED}
        if delta["calls"] <= 0:
            continue
        for c in COUNTED:
            total[c] += delta[c]
        hits = delta["shared_blks_hit"] + delta["shared_blks_read"]
        top.append((hits, " ".join(row["query"].split())[:90], int(delta["calls"])))
    tables = {}
    for name, row in after.tables.items():
        old = before.tables.get(name, {})
        changed = {k: row[k] - old.get(k, 0) for k in ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd")}
        if any(changed.values()):
            tables[name] = changed
    return {
        "statements": round(total["calls"] / n, 3),
        "rows": round(total["rows"] / n, 3),
        "buffers": round((total["shared_blks_hit"] + total["shared_blks_read"]) / n, 1),
        "wal_bytes": round(total["wal_bytes"] / n),
        "server_cpu_ms": round((after.cpu - before.cpu) * 1000 / n, 3),
        "tables": tables,
        "top": [
            {"buffers_per_call": round(h / c, 1), "calls": c, "sql": q}
            for h, q, c in sorted(top, reverse=True)[:4]
        ],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from benchmarks import chronoq_app
    from chronoq.config import Settings

    schema = f"bench_db_{uuid.uuid4().hex[:8]}"
    url = f"{args.database_url}?schema={schema}"
    conn = await asyncpg.connect(args.database_url)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    data = await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
    postmaster = int((Path(data) / "postmaster.pid").read_text().split()[0])
    await conn.execute(f"SET search_path = {schema}, public")
    app = chronoq_app.app
    app.settings = Settings().model_copy(update={"database_url": url, "redis_url": None})
    await app.open()
    env = {**environ_without_chronoq(), "PYTHONPATH": str(REPO), "CHRONOQ_DATABASE_URL": url}
    n, results = args.tasks, {}
    workers: list[subprocess.Popen[bytes]] = []

    async def lanes(count: int, width: int) -> None:
        async def lane(k: int) -> None:
            for _ in range(k):
                await chronoq_app.noop.adelay()

        await asyncio.gather(*(lane(count // width + (i < count % width)) for i in range(width)))

    async def done(target: int) -> None:
        deadline = time.monotonic() + args.timeout
        while await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'succeeded'") < target:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {target} tasks")
            await asyncio.sleep(0.05)

    async def phase(name: str, count: int, work: Any) -> None:
        say(f"  {name}: {count:,} tasks")
        before = await snapshot(conn, schema, postmaster)
        await work()
        results[name] = per_task(before, await snapshot(conn, schema, postmaster), count)

    def start_workers() -> None:
        argv = [sys.executable, "-m", "chronoq.cli", "worker", "--app"]
        argv += ["benchmarks.chronoq_app:app", "--concurrency", "16", "--log-level", "warning"]
        workers.extend(subprocess.Popen(argv, env=env, cwd=REPO) for _ in range(2))

    finished = 0
    try:
        await phase("submit", n, lambda: lanes(n, 64))

        async def cold() -> None:
            start_workers()
            await done(n)

        await phase("cold drain", n, cold)
        await asyncio.sleep(1.0)
        m = max(1, n // 5)

        async def serial() -> None:
            await lanes(m, 1)
            await done(n + m)

        await phase("one at a time", m, serial)
        finished = n + m

        async def end_to_end() -> None:
            await lanes(n, 64)
            await done(finished + n)

        await phase("end to end", n, end_to_end)
        finished += n
        for w in workers:
            w.send_signal(signal.SIGSTOP)
        await lanes(n, 64)

        async def drain() -> None:
            for w in workers:
                w.send_signal(signal.SIGCONT)
            await done(finished + n)

        await phase("drain", n, drain)
    finally:
        for w in workers:
            w.send_signal(signal.SIGCONT)
            w.terminate()
        for w in workers:
            w.wait()
        await app.close()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5499/test")
    parser.add_argument("-n", "--tasks", type=int, default=5000, help="tasks per phase")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    return parser.parse_args()


def run() -> None:
    args = parse_args()
    results = asyncio.run(main(args))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    head = ("per task", "statements", "rows", "buffers", "WAL bytes", "CPU ms")
    print("".join(f"{h:<16}" if i == 0 else f"{h:>11}" for i, h in enumerate(head)))
    for name, r in results.items():
        print(
            f"{name:<16}{r['statements']:>11.3f}{r['rows']:>11.2f}{r['buffers']:>11.1f}"
            f"{r['wal_bytes']:>11,}{r['server_cpu_ms']:>11.3f}"
        )
    for name, r in results.items():
        print(f"\n{name}: rows written per table {json.dumps(r['tables'])}")
        for t in r["top"]:
            print(f"  {t['buffers_per_call']:>8} buffers/call x {t['calls']:>5}  {t['sql']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    run()
