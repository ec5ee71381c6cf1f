"""Real processes: ``chronoq dev``, the CLI, distributed api/scheduler/workers, kill -9."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.processes import Proc, cli, free_port, start_dev, wait_ready, wait_status
from tests.waiting import until_sync


def test_dev_demo_and_cli(tmp_path: Path, procs: list[Proc]) -> None:
    dev, url = start_dev(tmp_path, "--demo")
    procs.append(dev)

    submitted = cli("submit", "demo.add", "--payload", '{"a": 20, "b": 22}', "--json", "--url", url)
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["id"]
    done = wait_status(url, task_id, "succeeded", timeout=5)
    assert done["result"] == 42

    shown = cli("tasks", "get", task_id, "--url", url)
    assert shown.returncode == 0
    assert "succeeded" in shown.stdout and "42" in shown.stdout
    listing = cli("tasks", "ls", "--url", url)
    assert listing.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert "demo.report" in listing.stdout  # the demo submitted its own tasks

    later = json.loads(
        cli(
            "submit", "demo.add", "-d", '{"a": 1, "b": 1}', "--in", "1m", "--json", "--url", url
        ).stdout
    )
    assert later["status"] == "scheduled"
    cancelled = cli("tasks", "cancel", later["id"], "--url", url)
    assert "cancelled" in cancelled.stdout
    again = cli("tasks", "cancel", later["id"], "--url", url)
    assert again.returncode != 0 and "cancelled" in again.stderr

    bad = cli("submit", "demo.add", "--payload", "[1]", "--url", url)
    assert bad.returncode != 0 and "payload" in bad.stderr
    assert "default" in cli("queues", "--url", url).stdout

    dead = wait_status(url, _demo_fail_id(url), "dead", timeout=10)
    retried = cli("tasks", "retry", dead["id"], "--url", url)
    assert "queued" in retried.stdout

    added = cli(
        "schedules",
        "add",
        "nightly",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Europe/Paris",
        "--task",
        "demo.add",
        "-d",
        '{"a": 1, "b": 2}',
        "--url",
        url,
    )
    assert added.returncode == 0, added.stderr
    assert "30 2 * * * (Europe/Paris)" in added.stdout and "02:30" not in added.stderr
    assert "nightly" in cli("schedules", "ls", "--url", url).stdout
    assert "paused" in cli("schedules", "pause", "nightly", "--url", url).stdout
    fired = json.loads(cli("schedules", "trigger", "nightly", "--json", "--url", url).stdout)
    assert wait_status(url, fired["id"], "succeeded", timeout=5)["result"] == 3
    bad = cli("schedules", "add", "x", "--cron", "99 * * * *", "--task", "t", "--url", url)
    assert bad.returncode != 0 and "out of range" in bad.stderr
    never = cli("schedules", "add", "x", "--cron", "0 0 30 2 *", "--task", "t", "--url", url)
    assert never.returncode != 0 and "'0 0 30 2 *' never fires" in never.stderr, never.stderr
    assert "deleted" in cli("schedules", "rm", "nightly", "--url", url).stdout

    assert dev.terminate() == 0
    assert "worker" in dev.output() and "stopped" in dev.output()


def _demo_fail_id(url: str) -> str:
    page = httpx.get(f"{url}/v1/tasks", params={"name": "demo.fail"}).json()
    return str(page["items"][0]["id"])


def test_cli_without_server_explains(tmp_path: Path) -> None:
    result = cli("tasks", "ls", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach the chronoq API" in result.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = cli("db", "upgrade", "--database-url", url)
    migrations = Path(__file__).parent.parent / "chronoq" / "store" / "migrations"
    versions = sorted({int(f.name[:4]) for f in migrations.glob("*.sql")})
    assert versions == list(range(1, len(versions) + 1))
    assert first.returncode == 0 and f"applied migrations {versions}" in first.stdout
    assert "up to date" in cli("db", "upgrade", "--database-url", url).stdout


def _records(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [
        (p[0], p[1], int(p[2])) for p in (line.split() for line in path.read_text().splitlines())
    ]


def test_distributed_two_workers_never_run_an_attempt_twice(
    pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    record = tmp_path / "record.txt"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_DATABASE_URL": pg_url,
        "RECORD_FILE": str(record),
        "CHRONOQ_APP": "tests.apps.recorder:app",
        "CHRONOQ_LOG_LEVEL": "warning",
    }
    assert cli("db", "upgrade", env=env).returncode == 0
    created = cli("keys", "create", "ci", env=env)  # `chronoq api` requires API keys
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    api = Proc(["api", "--port", str(port)], env, tmp_path / "api.log")
    procs.append(api)
    procs.append(Proc(["scheduler"], env, tmp_path / "scheduler.log"))
    for n in (1, 2):
        procs.append(Proc(["worker", "--concurrency", "8"], env, tmp_path / f"w{n}.log"))
    wait_ready(url, api)
    assert httpx.get(f"{url}/v1/tasks").status_code == 401

    ids = []
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as http:
        for i in range(300):
            spec: dict[str, Any] = {"name": "record", "payload": {"sleep": 0.01}}
            if i % 3 == 0:
                spec["delay_seconds"] = 0.5
            ids.append(http.post("/v1/tasks", json=spec).json()["id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            page = http.get("/v1/queues").json()
            counts = page[0]["counts"] if page else {}
            if counts.get("succeeded") == 300:
                break
            time.sleep(0.1)
    runs = _records(record)
    per_task = Counter(task for task, _, _ in runs)
    assert sorted(per_task) == sorted(ids)
    assert set(per_task.values()) == {1}, "an attempt ran twice"
    assert len({worker for _, worker, _ in runs}) == 2, "both workers should have taken work"
    for proc in procs:
        assert proc.terminate() == 0, proc.output()


def test_killed_process_tasks_are_retried_after_lease_timeout(
    db_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    """kill -9 the whole `chronoq dev` while a task runs; after a restart, the task's lease
    runs out and it runs again, and a task submitted before the crash is not lost."""
    record = tmp_path / "record.txt"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CHRONOQ_DATABASE_URL": db_url,
        "RECORD_FILE": str(record),
        "CHRONOQ_APP": "tests.apps.recorder:app",
        "CHRONOQ_LEASE_SECONDS": "2",
        "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
    }
    first = Proc(["dev", "--port", str(port), "--concurrency", "1"], env, tmp_path / "1.log")
    procs.append(first)
    wait_ready(url, first)
    running = httpx.post(
        f"{url}/v1/tasks", json={"name": "record", "payload": {"sleep": 1.5}, "max_attempts": 3}
    ).json()
    waiting = httpx.post(f"{url}/v1/tasks", json={"name": "record"}).json()
    wait_status(url, running["id"], "running", timeout=5)
    first.kill()

    second = Proc(["dev", "--port", str(port)], env, tmp_path / "2.log")
    procs.append(second)
    wait_ready(url, second)
    assert wait_status(url, waiting["id"], "succeeded", timeout=10)
    done = wait_status(url, running["id"], "succeeded", timeout=15)
    first_try, second_try = done["attempt_history"]
    assert first_try["outcome"] == "lost" and "lease" in first_try["error"]
    assert second_try["outcome"] == "succeeded"
    assert [r[2] for r in _records(record) if r[0] == running["id"]] == [1, 2]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        statuses = sorted(
            w["status"] for w in httpx.get(f"{url}/v1/workers", params={"all": "true"}).json()
        )
        if statuses == ["alive", "dead"]:
            break
        time.sleep(0.1)
    assert statuses == ["alive", "dead"]
    assert second.terminate() == 0


def test_two_scheduler_processes_fire_each_slot_once(
    db_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    import asyncio

    from chronoq import App
    from chronoq.models import ScheduleCreate

    async def setup() -> None:
        async with App(db_url) as app:
            for name, rule in (
                ("cron", {"cron": "* * * * * *"}),
                ("interval", {"interval_seconds": 1}),
            ):
                await app.store.schedules.create(
                    ScheduleCreate.model_validate({"name": name, "task": {"name": "noop"}, **rule}),
                    time.time(),
                )

    async def slots() -> dict[str, list[float]]:
        async with App(db_url) as app:
            found: dict[str, list[float]] = {}
            for name in ("cron", "interval"):
                schedule = await app.store.schedules.get(name)
                tasks = await app.store.list_tasks(schedule_id=schedule.id, limit=1000)
                found[name] = [t.slot for t in tasks if t.slot is not None]
            return found

    asyncio.run(setup())
    env = {"CHRONOQ_DATABASE_URL": db_url, "CHRONOQ_POLL_SECONDS": "0.05"}
    for n in (1, 2):
        port = free_port()
        procs.append(Proc(["scheduler", "--health-port", str(port)], env, tmp_path / f"s{n}.log"))
        wait_ready(f"http://127.0.0.1:{port}", procs[-1])
    # both race for every slot from here on; three slots of each schedule, then stop
    before = {name: len(fired) for name, fired in asyncio.run(slots()).items()}
    until_sync(
        lambda: all(len(f) >= before[n] + 3 for n, f in asyncio.run(slots()).items()),
        "no three more slots of each schedule",
    )
    for proc in procs:
        assert proc.terminate() == 0, proc.output()
    for name, fired in asyncio.run(slots()).items():
        assert len(fired) >= before[name] + 3, (name, fired)
        assert len(fired) == len(set(fired)), f"{name}: a slot fired twice"


def test_top_shows_queues_workers_and_throughput(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = Proc(
        [
            "dev",
            "--demo",
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp_path / 'top.db'}",
        ],
        {},
        tmp_path / "dev.log",
    )
    procs.append(dev)
    wait_ready(url, dev)
    ids = [
        httpx.post(
            f"{url}/v1/tasks", json={"name": "demo.add", "payload": {"a": 1, "b": 1}}
        ).json()["id"]
        for _ in range(20)
    ]
    for task_id in ids:
        wait_status(url, task_id, "succeeded")
    frame = cli("top", "--once", "--url", url)
    assert frame.returncode == 0, frame.stderr
    lines = frame.stdout.splitlines()
    assert lines[0].startswith("chronoq top") and "succeeded/s" in lines[1]
    assert "1 alive" in lines[2]
    queue_row = next(line for line in lines if line.startswith("default "))
    assert int(queue_row.split()[6]) >= 20  # succeeded column
    header = next(i for i, line in enumerate(lines) if line.startswith("WORKER"))
    worker_row = lines[header + 1].split()
    assert worker_row[1] == "default" and worker_row[2].endswith("/8")
    dev.terminate()
