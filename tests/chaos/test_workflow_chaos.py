"""Workflow chaos: a 2,000-node DAG with random fan-in on PostgreSQL, three worker
processes killed with -9 and restarted every two seconds. Afterwards every node succeeded
exactly once, no attempt of a node started twice (a node is never enqueued twice), and no
node's handler started before every parent's successful attempt had finished."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from chronoq import App
from chronoq.dag import WorkflowCreate
from chronoq.store import workflows
from tests.conftest import make_settings
from tests.processes import Proc, cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

NODES = 2000
CHAOS_SECONDS = 20


def random_dag(rng: random.Random) -> WorkflowCreate:
    """Node i depends on 0-3 earlier nodes among the 150 before it: depth and fan-in both."""
    edges = []
    for i in range(1, NODES):
        for parent in rng.sample(range(max(0, i - 150), i), min(i, rng.choice([0, 1, 2, 3]))):
            edges.append({"parent": f"n{parent}", "child": f"n{i}"})
    return WorkflowCreate.model_validate(
        {
            "name": "chaos",
            "nodes": [
                {"id": f"n{i}", "task": {"name": "node", "max_attempts": 20}} for i in range(NODES)
            ],
            "edges": edges,
        }
    )


async def test_a_dag_survives_workers_killed_mid_flight(pg_url: str, tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "CHRONOQ_APP": "tests.apps.dagnodes:app",
        "RECORD_FILE": str(record),
        "CHRONOQ_LEASE_SECONDS": "2",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
        "CHRONOQ_POLL_SECONDS": "0.2",
        "CHRONOQ_LOG_LEVEL": "warning",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    rng = random.Random(16)
    spec = random_dag(rng)
    app = App(settings=make_settings(pg_url))
    await app.open()
    scheduler = Proc(["scheduler"], env, tmp_path / "sched.log")
    workers = [
        Proc(["worker", "--concurrency", "8"], env, tmp_path / f"w{n}.log") for n in range(3)
    ]
    everything = [scheduler, *workers]
    kills = 0
    try:
        started = await workflows.create(app.store, spec, time.time())
        workflow_id = started.workflow.id
        begun = time.monotonic()
        done = False
        while not done:
            await asyncio.sleep(2)
            state = await workflows.list_workflows(app.store)
            done = state[0].status != "running"
            assert time.monotonic() - begun < 240, f"workflow still running: {state[0].counts}"
            if time.monotonic() - begun < CHAOS_SECONDS and not done:
                n = rng.randrange(len(workers))
                workers[n].kill()
                kills += 1
                workers[n] = Proc(
                    ["worker", "--concurrency", "8"], env, tmp_path / f"w{n}-{kills}.log"
                )
                everything.append(workers[n])
        final = await workflows.get(app.store, workflow_id)
        assert final.status == "succeeded", final.counts
    finally:
        for proc in everything:
            if proc.popen.poll() is None:
                proc.kill()
        await app.close()

    starts = [line.split() for line in record.read_text().splitlines()]
    per_attempt = Counter((task_id, attempt) for task_id, attempt, _ in starts)
    assert max(per_attempt.values()) == 1, "an attempt of a node started twice"
    schema = pg_url.split("schema=")[1]
    conn = await asyncpg.connect(pg_url.split("?")[0], server_settings={"search_path": schema})
    try:
        succeeded = await conn.fetch(
            "SELECT task_id, count(*) AS n, min(finished_at) AS at FROM attempts "
            "WHERE outcome = 'succeeded' GROUP BY task_id"
        )
        edges = await conn.fetch("SELECT parent, child FROM workflow_edges")
        attempts = await conn.fetch(
            "SELECT task_id, attempt, worker_id, started_at, finished_at, outcome FROM attempts"
        )
    finally:
        await conn.close()
    assert len(succeeded) == NODES and all(r["n"] == 1 for r in succeeded)
    done_at = {r["task_id"]: r["at"] for r in succeeded}
    # a handler's own start stamp, not the claim's: the worker may stamp a claim before it
    # awaits the database, so a claim's started_at can precede the commit that queued it
    start_at: dict[str, float] = {}
    for task_id, _, at in starts:
        start_at[task_id] = min(float(at), start_at.get(task_id, float("inf")))
    early = [
        (e["parent"], e["child"]) for e in edges if start_at[e["child"]] < done_at[e["parent"]]
    ]
    history = {pair: [dict(a) for a in attempts if a["task_id"] in pair] for pair in early[:2]}
    assert not early, f"{len(early)} nodes started before a parent succeeded: {history}"
    print(f"{NODES} nodes, {len(edges)} edges, {kills} workers killed, {len(starts)} starts")
