"""Submitting over gRPC beside REST: the same ``chronoq api`` process, the same run.

One ``chronoq api --grpc-port`` process (API keys on, as in production, with no rate
limit: ``CHRONOQ_RATE_LIMIT=0``) and K
``chronoq worker`` processes on a fresh PostgreSQL schema; this process is the client.
For each transport, in alternating order from run to run:

``submit/s, 1 in flight``
    ``--tasks`` no-op submissions, each waiting for the answer before the next.
``submit/s, N in flight``
    the same with ``--in-flight`` submissions outstanding (REST: an httpx pool of that many
    HTTP/1.1 connections; gRPC: one HTTP/2 channel).
``submit→start p50/p99``
    ``--idle-tasks`` tasks one at a time, ``--idle-gap-ms`` apart, on an otherwise idle
    system: ``attempts.started_at`` minus ``time.time()`` just before the client sent it
    (one clock: same machine), so it includes the call itself.

Every figure is the median of ``--runs`` runs (a fresh schema and processes each). The
workers drain between phases. Progress goes to stderr, the table to stdout.

    python benchmarks/grpc_rest.py --runs 3

(named ``grpc_rest.py``, not ``grpc.py``: a script's folder comes first on ``sys.path``,
and ``grpc.py`` would shadow grpcio.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import (
    DEFAULT_POSTGRES,
    ChronoqProcesses,
    Percentiles,
    drop_schema,
    environ_without_chronoq,
    fetch,
    ms,
    postgres_database,
    say,
)
from chronoq import App
from chronoq.grpc.v1 import chronoq_pb2 as pb
from chronoq.grpc.v1 import chronoq_pb2_grpc as pb_grpc
from chronoq.store import Store

TASK = "bench.noop"
TRANSPORTS = ("rest", "grpc")

#: sends one task and returns its id
Submit = Callable[[], Awaitable[str]]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Clients:
    """One REST client and one gRPC channel to the API process, both with the key."""

    def __init__(self, url: str, target: str, key: str, in_flight: int) -> None:
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        self.http = httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=30
        )
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ChronoqStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),)

    async def rest(self) -> str:
        response = await self.http.post("/v1/tasks", json={"name": TASK, "max_attempts": 1})
        response.raise_for_status()
        task_id: str = response.json()["id"]
        return task_id

    async def grpc(self) -> str:
        spec = pb.TaskSpec(name=TASK, max_attempts=1)
        answer = await self.stub.Submit(pb.SubmitRequest(task=spec), metadata=self.metadata)
        return answer.task.id

    async def close(self) -> None:
        await self.http.aclose()
        await self.channel.close()


async def submit_rate(submit: Submit, count: int, in_flight: int) -> float:
    """Submissions a second, ``in_flight`` outstanding at a time."""
    left = count

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await submit()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return count / (time.perf_counter() - started)


async def idle_latency(store: Store, submit: Submit, count: int, gap: float) -> Percentiles:
    sent: dict[str, float] = {}
    for _ in range(count):
        before = time.time()
        sent[await submit()] = before
        await asyncio.sleep(gap)
    await drained(store)
    rows = await fetch(
        store,
        "SELECT task_id, started_at FROM attempts WHERE attempt = 1 AND task_id = ANY($1)",
        list(sent),
    )
    return Percentiles.of([r["started_at"] - sent[r["task_id"]] for r in rows])


async def drained(store: Store, max_wait: float = 120.0) -> None:
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        rows = await fetch(
            store, "SELECT count(*) AS n FROM tasks WHERE status IN ('queued', 'running')"
        )
        if rows[0]["n"] == 0:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"tasks still unfinished after {max_wait:.0f}s")


async def wait_serving(url: str, target: str, procs: ChronoqProcesses) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http, grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            procs.check_alive()
            try:
                ready = (await http.get(f"{url}/readyz")).status_code == 200
                check = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if ready and check.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except (httpx.HTTPError, grpc.aio.AioRpcError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the API did not become ready in 30 s")


async def one_run(number: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    database = postgres_database(args.database_url)
    # no per-key rate limit: gRPC submits faster than its default 500 a second
    env = {
        **environ_without_chronoq(),
        "CHRONOQ_DATABASE_URL": database.url,
        "CHRONOQ_RATE_LIMIT": "0",
    }
    port, grpc_port = free_port(), free_port()
    url, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    app = App(database_url=database.url)
    await app.open()  # creates the schema
    _, key = await app.store.keys.create("bench", ["write"])
    log_dir = Path(tempfile.mkdtemp(prefix="chronoq-grpc-bench-"))
    procs = ChronoqProcesses(env, log_dir)
    procs.spawn("api", ["api", "--port", str(port), "--grpc-port", str(grpc_port)])
    for n in range(args.workers):
        procs.spawn(
            f"worker{n}",
            ["worker", "--app", "benchmarks.chronoq_app:app", "--concurrency", "16"],
        )
    clients = Clients(url, target, key, args.in_flight)
    figures: dict[str, dict[str, float]] = {}
    try:
        await wait_serving(url, target, procs)
        order = TRANSPORTS if number % 2 == 0 else TRANSPORTS[::-1]
        for name in order:
            submit: Submit = getattr(clients, name)
            for _ in range(50):  # warm up connections and the key cache
                await submit()
            await drained(app.store)
            one = await submit_rate(submit, args.tasks, 1)
            await drained(app.store)
            many = await submit_rate(submit, args.tasks, args.in_flight)
            await drained(app.store)
            await asyncio.sleep(0.5)  # the workers go back to waiting
            latency = await idle_latency(app.store, submit, args.idle_tasks, args.idle_gap_ms / 1e3)
            assert latency.p50_ms is not None and latency.p99_ms is not None
            figures[name] = {"one": one, "many": many, "p50": latency.p50_ms, "p99": latency.p99_ms}
            say(
                f"  run {number + 1} {name}: {one:.0f} submit/s one at a time, "
                f"{many:.0f} with {args.in_flight} in flight, submit→start "
                f"p50 {ms(latency.p50_ms)} ms p99 {ms(latency.p99_ms)} ms"
            )
        procs.check_alive()
    finally:
        await clients.close()
        procs.stop()
        await app.close()
        if database.schema:
            await drop_schema(database.url, database.schema)
    return figures


ROWS = (
    ("one", "submit/s, 1 in flight", "{:,.0f}"),
    ("many", "submit/s, {in_flight} in flight", "{:,.0f}"),
    ("p50", "submit→start p50 ms, idle", "{:.2f}"),
    ("p99", "submit→start p99 ms, idle", "{:.2f}"),
)


def table(runs: list[dict[str, dict[str, float]]], in_flight: int) -> str:
    lines = ["| figure | REST | gRPC | gRPC / REST |", "|---|---:|---:|---:|"]
    for key, label, form in ROWS:
        rest = statistics.median(r["rest"][key] for r in runs)
        over_grpc = statistics.median(r["grpc"][key] for r in runs)
        lines.append(
            f"| {label.format(in_flight=in_flight)} | {form.format(rest)} | "
            f"{form.format(over_grpc)} | {over_grpc / rest:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000, help="submissions per rate phase")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--idle-tasks", type=int, default=200)
    parser.add_argument("--idle-gap-ms", type=float, default=20.0)
    parser.add_argument("--json-out", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    runs = []
    for number in range(args.runs):
        say(f"run {number + 1}/{args.runs}")
        runs.append(asyncio.run(one_run(number, args)))
    print(table(runs, args.in_flight))
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"args": vars(args) | {"json_out": None}, "runs": runs}, indent=2)
        )


if __name__ == "__main__":
    main()
