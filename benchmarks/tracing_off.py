"""What chronoq's tracing hooks cost a task when tracing is off, against what a task costs.

With OpenTelemetry not set up (:mod:`chronoq.tracing`, ``tracer is None``), every task
still passes these hooks once:

- the API's ``tracing.submit_span`` around its insert (:mod:`chronoq.api.service`);
- ``tracing.current_traceparent`` when its insert row is made (``NewTask.of``);
- the worker's ``tracing.run_span`` around the attempt and ``tracing.ended`` after it
  (:mod:`chronoq.worker.attempts`).

This times those calls exactly as the hot path makes them, a million times over, minus
the same loop without them, and prints the cost per task in microseconds and as a share
of the CPU one task costs chronoq (``--task-ms``: the "worker CPU ms/task" plus "PG+Redis
CPU ms/task" drain figures ``benchmarks/compare.py`` prints for chronoq-pg, 0.06 + 0.18
on this machine, 2026-12-03; it leaves out the submitter's CPU, so the share printed is
an upper bound). The whole-system figure it bounds is
compare.py's end-to-end and drain throughput with tracing off: hooks that cost 0.1 % of
a task's CPU cannot move those by 3 %, the bar issue #22 sets, while run-to-run noise of
compare.py on a shared 2-core machine is several times that::

    python -m benchmarks.tracing_off
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from chronoq import tracing
from chronoq.models import TaskCreate
from chronoq.store import Completion, TaskRecord
from chronoq.store.sqlite import SQLiteStore


async def one_task() -> TaskRecord:
    """A real claimed task (its record is what ``run_span`` is given)."""
    async with SQLiteStore(":memory:") as store:
        await store.migrate()
        now = time.time()
        await store.create_task(TaskCreate(name="bench.noop"), now)
        (task,) = await store.claim("bench", "default", 1, now, 60.0)
        return task


def hooks(n: int, task: TaskRecord, done: Completion) -> float:
    """Seconds for ``n`` tasks' worth of the hooks, as the hot path calls them."""
    start = time.perf_counter()
    for _ in range(n):
        with tracing.submit_span(None, "rest"):
            tracing.current_traceparent()
        with tracing.run_span(task) as span:
            pass
        tracing.ended(span, done)
    return time.perf_counter() - start


def bare(n: int) -> float:
    """The same loop without the hooks (what the loop itself costs)."""
    start = time.perf_counter()
    for _ in range(n):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median)")
    parser.add_argument(
        "--task-ms",
        type=float,
        default=0.24,
        help="CPU one task costs chronoq, ms (compare.py: worker + PG+Redis CPU, drain)",
    )
    args = parser.parse_args()
    if tracing.tracer is not None or "opentelemetry.trace" in sys.modules:
        raise SystemExit("tracing is on in this process: unset OTEL_* / CHRONOQ_TRACING")
    task = asyncio.run(one_task())
    done = Completion.success(task, time.time(), None)
    costs = []
    for _ in range(args.rounds):
        costs.append((hooks(args.n, task, done) - bare(args.n)) / args.n)
    per_task_us = statistics.median(costs) * 1e6
    share = per_task_us / (args.task_ms * 1000)
    print(
        f"tracing off: hooks cost {per_task_us:.3f} µs per task "
        f"(median of {args.rounds} rounds of {args.n:,}; spread "
        f"{min(costs) * 1e6:.3f} to {max(costs) * 1e6:.3f} µs)"
    )
    print(f"  = {share:.3%} of the {args.task_ms} ms of CPU a task costs chronoq")


if __name__ == "__main__":
    main()
