"""The process pool with real processes and signals: poison handlers, hard limits, kill -9 of
a child, crash loops, autoscaling and shutdown, on SQLite, PostgreSQL and the Redis broker.

Every test runs ``chronoq dev --pool process`` on the handlers of ``tests/apps/poison.py``,
which write a ``start``/``end`` line per attempt (with the child's pid) to a record file.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chronoq.pool import protocol
from chronoq.pool.process import describe_exit, rss_mib
from tests.processes import Proc, free_port, wait_ready, wait_status

APP = "tests.apps.poison:app"
QUICK_RETRY = {"base": 0.2, "factor": 2, "jitter": 0}


class Pool:
    """A running ``chronoq dev --pool process`` and the attempts its handlers recorded."""

    def __init__(
        self,
        tmp_path: Path,
        db_url: str,
        *flags: str,
        env: dict[str, str] | None = None,
        name: str = "dev",
    ) -> None:
        self.record = tmp_path / "record.txt"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.proc = Proc(
            [
                "dev",
                "--app",
                APP,
                "--pool",
                "process",
                "--port",
                str(self.port),
                "--database-url",
                db_url,
                *flags,
            ],
            {
                "RECORD_FILE": str(self.record),
                "CHRONOQ_LOG_FORMAT": "text",
                "CHRONOQ_LEASE_SECONDS": "3",
                "CHRONOQ_HEARTBEAT_SECONDS": "0.5",
                **(env or {}),
            },
            tmp_path / f"{name}.log",
        )
        wait_ready(self.url, self.proc, timeout=40)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def submit(self, name: str, payload: dict[str, Any] | None = None, **spec: Any) -> str:
        response = self.http.post(
            "/v1/tasks", json={"name": name, "payload": payload or {}, **spec}
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    def task(self, task_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/v1/tasks/{task_id}").json()
        return body

    def wait(self, task_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return wait_status(self.url, task_id, *statuses, timeout=timeout)

    def workers(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = self.http.get("/v1/workers").json()
        return body

    def records(self, event: str = "start") -> list[tuple[str, int, int, float]]:
        """(task id, attempt, child pid, time) of every ``event`` line."""
        if not self.record.exists():
            return []
        rows = [line.split() for line in self.record.read_text().splitlines()]
        return [(r[1], int(r[2]), int(r[3]), float(r[4])) for r in rows if r[0] == event]

    def started(self, task_id: str, timeout: float = 20) -> int:
        """Wait until ``task_id`` started in a child; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for found, _, pid, _ in self.records():
                if found == task_id:
                    return pid
            time.sleep(0.02)
        raise AssertionError(f"{task_id} never started:\n{self.proc.output()[-3000:]}")

    def close(self) -> int:
        self.http.close()
        return self.proc.terminate(timeout=30)


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[list[Pool]]:
    started: list[Pool] = []
    yield started
    for pool in started:
        if pool.proc.popen.poll() is None:
            pool.proc.kill()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chronoq.db'}"


def start(pools: list[Pool], *args: Any, **kwargs: Any) -> Pool:
    pool = Pool(*args, **kwargs)
    pools.append(pool)
    return pool


def gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def assert_poison_contained(pool: Pool, ordinary: list[str], poison: dict[str, str]) -> None:
    """Every ordinary task ran exactly once and succeeded; every poison task's attempts all
    crashed with the expected error; the worker process is the one we started."""
    for task_id in ordinary:
        task = pool.wait(task_id, "succeeded")
        assert task["attempts"] == 1, task
    for task_id, error in poison.items():
        task = pool.wait(task_id, "dead")
        outcomes = [a["outcome"] for a in task["attempt_history"]]
        assert outcomes == ["crashed"] * task["max_attempts"], task
        assert all(error in a["error"] for a in task["attempt_history"]), task
    starts = Counter(task_id for task_id, *_ in pool.records())
    assert all(starts[t] == 1 for t in ordinary), starts
    ends = Counter(task_id for task_id, *_ in pool.records("end"))
    assert all(ends[t] == 1 for t in ordinary), ends
    attempts = Counter((task_id, attempt) for task_id, attempt, *_ in pool.records())
    assert max(attempts.values()) == 1  # no attempt ran twice
    crashes = sum(pool.task(t)["max_attempts"] for t in poison)
    deadline = time.monotonic() + 5  # the registry hears of restarts at most once a second
    while pool.workers()[0]["child_restarts"] < crashes and time.monotonic() < deadline:
        time.sleep(0.1)
    (worker,) = pool.workers()
    assert worker["pid"] == pool.proc.popen.pid and pool.proc.popen.poll() is None
    assert worker["child_restarts"] == crashes


def test_poison_tasks_fail_only_their_own_attempts(
    db_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, db_url, "--processes", "2")
    ordinary, poison = [], {}
    for i in range(30):
        ordinary.append(pool.submit("ok", {"n": i, "sleep": 0.01}))
        if i % 10 == 3:
            poison[pool.submit("exit", {"code": 3}, max_attempts=2, backoff=QUICK_RETRY)] = (
                "child process exited with code 3"
            )
        if i % 10 == 7:
            poison[pool.submit("segfault", max_attempts=2, backoff=QUICK_RETRY)] = (
                "child process killed by SIGSEGV"
            )
    assert_poison_contained(pool, ordinary, poison)
    pids = {pid for *_, pid, _ in pool.records()}
    assert pool.proc.popen.pid not in pids  # handlers never ran in the worker process
    output = pool.proc.output()
    assert "crashes in a row" in output  # crash-loop backoff kicked in
    assert pool.close() == 0


def test_poison_with_the_redis_broker(sqlite_url: str, tmp_path: Path, pools: list[Pool]) -> None:
    queue = f"pool{uuid.uuid4().hex[:8]}"
    pool = start(
        pools,
        tmp_path,
        sqlite_url,
        "--processes",
        "2",
        "--queues",
        queue,
        env={"CHRONOQ_BROKER_URL": "redis://127.0.0.1:6379/12"},
    )
    ordinary = [pool.submit("ok", {"n": i}, queue=queue) for i in range(20)]
    poison = {
        pool.submit(
            "segfault", queue=queue, max_attempts=2, backoff=QUICK_RETRY
        ): "child process killed by SIGSEGV"
    }
    ordinary += [pool.submit("ok_async", {"n": i}, queue=queue) for i in range(10)]
    assert_poison_contained(pool, ordinary, poison)
    assert pool.close() == 0


def worker_events(ws: Any, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """The next ``count`` worker events from a ``/v1/events?types=worker`` socket."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(seen)} of {count} worker events: {seen}"
        seen += [e for e in orjson.loads(ws.recv(timeout=left)) if e["type"] == "worker"]
    return seen


def test_a_replaced_child_is_an_event_with_its_exit_and_backoff(
    db_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, db_url, "--processes", "2")
    with connect(f"ws://127.0.0.1:{pool.port}/v1/events?types=worker") as ws:
        poison = pool.submit("exit", {"code": 3}, max_attempts=2, backoff=QUICK_RETRY)
        first, second = worker_events(ws, 2)
        victim = pool.submit("ok", {"sleep": 30})
        pid = pool.started(victim)
        os.kill(pid, signal.SIGKILL)
        (third,) = worker_events(ws, 1)
    assert pool.wait(poison, "dead")["attempts"] == 2
    (worker,) = pool.workers()
    pids = [p for t, _, p, _ in pool.records() if t == poison]
    for event, child in zip((first, second), pids, strict=True):
        assert event["status"] == "child_restarted"
        assert event["worker_id"] == worker["id"]
        assert event["pid"] == child and event["slot"] in (0, 1)
        assert event["exit_code"] == 3 and event["signal"] is None and event["crash"]
        assert event["task_id"] == poison
        assert event["error"] == f"child process exited with code 3 (pid {child})"
    assert [first["restarts"], second["restarts"]] == [1, 2]
    # the second crash 0.2 s after the first: crash-loop backoff before its replacement
    assert (first["crashes_in_a_row"], first["backoff"]) == (1, 0)
    assert second["crashes_in_a_row"] == 2 and 0 < second["backoff"] <= 0.2
    assert third["signal"] == "SIGKILL" and third["exit_code"] is None
    assert third["pid"] == pid and third["task_id"] == victim and third["restarts"] == 3
    assert pool.wait(victim, "running", "succeeded")["attempts"] >= 1
    deadline = time.monotonic() + 5  # the registry hears of restarts at most once a second
    while pool.workers()[0]["child_restarts"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.workers()[0]["child_restarts"] == 3
    # task events stay the default: a plain subscriber never sees worker events
    with connect(f"ws://127.0.0.1:{pool.port}/v1/events") as ws:
        pool.submit("exit", {"code": 4}, max_attempts=1)
        deadline = time.monotonic() + 5
        statuses = []
        while "dead" not in statuses and time.monotonic() < deadline:
            events = orjson.loads(ws.recv(timeout=5))
            assert all(e["type"] == "task" for e in events), events
            statuses += [e["status"] for e in events]
    with connect(f"ws://127.0.0.1:{pool.port}/v1/events?types=task,nope") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


def test_kill_9_of_a_child_mid_task_is_a_crashed_attempt_then_a_retry(
    db_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, db_url, "--processes", "2")
    victim = pool.submit("ok", {"sleep": 2.0}, backoff=QUICK_RETRY)
    bystander = pool.submit("ok", {"sleep": 1.0})
    pid = pool.started(victim)
    pool.started(bystander)
    os.kill(pid, signal.SIGKILL)
    task = pool.wait(victim, "succeeded")
    first, second = task["attempt_history"]
    assert first["outcome"] == "crashed"
    assert first["error"] == f"child process killed by SIGKILL (pid {pid})"
    assert second["outcome"] == "succeeded"
    assert pool.wait(bystander, "succeeded")["attempts"] == 1
    assert [t for t, *_ in pool.records("end")].count(victim) == 1
    # a fresh child took the slot at once: the retry ran in a new pid
    assert [p for t, _, p, _ in pool.records() if t == victim][1] != pid
    assert pool.workers()[0]["pid"] == pool.proc.popen.pid


def test_hard_timeout_kills_a_sync_handler_and_reuses_the_slot(
    sqlite_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, sqlite_url, "--processes", "1")
    sleepy = pool.submit("sleepy", {"seconds": 60}, timeout_seconds=1, max_attempts=1)
    pid = pool.started(sleepy)
    task = pool.wait(sleepy, "dead", timeout=10)
    (attempt,) = task["attempt_history"]
    assert attempt["outcome"] == "timeout" and "timed out after 1" in attempt["error"]
    assert gone(pid, timeout=3)  # SIGTERM (SIGKILL after the grace) ended the handler
    after = time.monotonic()
    follower = pool.submit("ok")
    pool.wait(follower, "succeeded", timeout=5)
    assert time.monotonic() - after < 3  # the single slot is back, with a fresh child
    assert pool.started(follower) != pid


def test_cancelling_a_running_task_kills_its_child(
    sqlite_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, sqlite_url, "--processes", "1")
    sleepy = pool.submit("sleepy", {"seconds": 60})
    pid = pool.started(sleepy)
    assert pool.http.post(f"/v1/tasks/{sleepy}/cancel").status_code == 200
    assert gone(pid, timeout=3)
    follower = pool.submit("ok")
    assert pool.wait(follower, "succeeded", timeout=5)["attempts"] == 1
    assert pool.task(sleepy)["status"] == "cancelled"


def test_memory_and_task_limits_recycle_children(
    sqlite_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(
        pools,
        tmp_path,
        sqlite_url,
        "--processes",
        "1",
        "--max-memory-per-child",
        "200",
        "--max-tasks-per-child",
        "3",
    )
    hog = pool.submit("hog", {"mib": 3000}, max_attempts=1)
    hog_pid = pool.started(hog)
    task = pool.wait(hog, "dead", timeout=20)
    (attempt,) = task["attempt_history"]
    assert attempt["outcome"] == "crashed", attempt
    assert f"child process {hog_pid} killed" in attempt["error"]
    assert "over --max-memory-per-child 200 MiB" in attempt["error"]
    ids = [pool.submit("ok", {"n": i}) for i in range(7)]
    for task_id in ids:
        pool.wait(task_id, "succeeded")
    pids = [pool.started(t) for t in ids]
    assert len(set(pids)) == 3 and hog_pid not in pids  # 3 tasks per child, then a new one
    assert all(pids.count(p) <= 3 for p in pids)


def test_handler_errors_cross_the_process_boundary(
    sqlite_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, sqlite_url, "--processes", "1")
    raised = pool.wait(pool.submit("fails", max_attempts=1), "dead")
    (attempt,) = raised["attempt_history"]
    assert attempt["outcome"] == "failed" and attempt["error"] == "ValueError: bad input"
    assert 'raise ValueError("bad input")' in attempt["traceback"]
    expected = pool.wait(pool.submit("fails", {"permanent": True}, max_attempts=1), "dead")
    assert expected["error"] == "expected failure"
    assert expected["attempt_history"][0]["traceback"] is None
    unknown = pool.wait(pool.submit("no.such.handler", max_attempts=1), "dead")
    assert "no handler named 'no.such.handler'" in unknown["error"]
    assert pool.wait(pool.submit("ok_async", {"n": 7}), "succeeded")["result"] == 7


def test_sigterm_drains_children_and_a_second_one_gives_tasks_back(
    sqlite_url: str, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = start(pools, tmp_path, sqlite_url, "--processes", "2")
    draining = pool.submit("ok", {"sleep": 1.5})
    child = pool.started(draining)
    pool.proc.popen.send_signal(signal.SIGTERM)
    assert pool.proc.popen.wait(20) == 0
    assert gone(child)
    assert [t for t, *_ in pool.records("end")] == [draining]  # it finished, then we stopped

    second = start(pools, tmp_path, sqlite_url, "--processes", "2", name="second")
    assert second.task(draining)["status"] == "succeeded"
    cut = second.submit("ok", {"sleep": 4.0})
    child = second.started(cut)
    began = time.monotonic()
    second.proc.popen.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    second.proc.popen.send_signal(signal.SIGTERM)
    assert second.proc.popen.wait(20) == 0
    assert time.monotonic() - began < 3  # did not wait for the 4 s handler
    assert gone(child)

    third = start(pools, tmp_path, sqlite_url, "--processes", "2", name="third")
    task = third.wait(cut, "succeeded", timeout=20)
    assert [a["outcome"] for a in task["attempt_history"]] == ["lost", "succeeded"]
    assert third.close() == 0


def test_autoscale_grows_and_shrinks_children(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"RECORD_FILE": str(tmp_path / "record.txt"), "CHRONOQ_LOG_FORMAT": "text"}
    api = Proc(
        ["dev", "--app", APP, "--port", str(port), "--database-url", pg_url, "--concurrency", "1"],
        {**env, "CHRONOQ_QUEUES": "none"},
        tmp_path / "api.log",
    )
    worker = Proc(
        [
            "worker",
            "--app",
            APP,
            "--pool",
            "process",
            "--autoscale",
            "1,3",
            "--database-url",
            pg_url,
        ],
        env,
        tmp_path / "worker.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, api)
        with httpx.Client(base_url=url) as http:
            ids = [
                http.post("/v1/tasks", json={"name": "ok", "payload": {"sleep": 0.3}}).json()["id"]
                for _ in range(40)
            ]
            try:
                for task_id in ids:
                    wait_status(url, task_id, "succeeded", timeout=60)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{worker.output()[-4000:]}") from None
        record = (tmp_path / "record.txt").read_text().splitlines()
        pids = {line.split()[3] for line in record if line.startswith("start")}
        assert len(pids) == 3, pids  # 1 child at first, grown to the MAX of 3
        deadline = time.monotonic() + 20
        while "the pool shrinks" not in worker.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "the pool shrinks" in worker.output()
        assert worker.terminate(20) == 0
    finally:
        for proc in (api, worker):
            if proc.popen.poll() is None:
                proc.kill()


def test_exit_descriptions_and_rss() -> None:
    assert describe_exit(-11, 5) == "child process killed by SIGSEGV (pid 5)"
    assert describe_exit(1, 5) == "child process exited with code 1 (pid 5)"
    assert describe_exit(-200, 5) == "child process killed by signal 200 (pid 5)"
    rss = rss_mib(os.getpid())
    assert rss is not None and rss > 1
    assert rss_mib(2**22 + 12345) is None


def test_a_handler_can_choose_its_pool(sqlite_url: str, tmp_path: Path, pools: list[Pool]) -> None:
    mixed = start(pools, tmp_path, sqlite_url, "--processes", "1")
    worker_pid = mixed.proc.popen.pid
    assert mixed.wait(mixed.submit("inline"), "succeeded")["result"] == worker_pid
    child_pid = mixed.wait(mixed.submit("isolated"), "succeeded")["result"]
    assert child_pid != worker_pid
    assert mixed.close() == 0
    port = free_port()
    plain = Proc(
        [
            "dev",
            "--app",
            APP,
            "--port",
            str(port),
            "--database-url",
            sqlite_url,
            "--processes",
            "1",
        ],
        {},
        tmp_path / "async.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, plain)
        submitted = httpx.post(f"{url}/v1/tasks", json={"name": "isolated"}).json()
        result = wait_status(url, submitted["id"], "succeeded")["result"]
        assert result != plain.popen.pid  # in a child, though the worker's pool is async
        submitted = httpx.post(f"{url}/v1/tasks", json={"name": "pid"}).json()
        assert wait_status(url, submitted["id"], "succeeded")["result"] == plain.popen.pid
        assert plain.terminate() == 0
    finally:
        if plain.popen.poll() is None:
            plain.kill()


def test_results_too_big_or_not_json_fail_in_the_child() -> None:
    big = orjson.loads(protocol.success("t", "x" * 100, limit=50))
    assert big["ok"] is False and big["task_failed"] is True
    assert "more than the 50 a child may send" in big["message"]
    odd = orjson.loads(protocol.success("t", {1, 2}, limit=1000))
    assert odd["message"] == "result is not JSON-serialisable: set"
    raised = orjson.loads(protocol.failure_line("t", ValueError("bad \udc80 byte")))
    assert raised["type"] == "ValueError" and raised["retry"] is True
    assert raised["message"] == "bad ? byte" and raised["traceback"]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"  # killed, not yet reaped


def test_children_die_with_their_worker(sqlite_url: str, tmp_path: Path, pools: list[Pool]) -> None:
    pool = start(pools, tmp_path, sqlite_url, "--processes", "2")
    busy = pool.started(pool.submit("sleepy", {"seconds": 60}))
    children = children_of(pool.proc.popen.pid)
    assert busy in children and len(children) == 2
    pool.proc.kill()  # kill -9: no drain, no goodbye
    deadline = time.monotonic() + 3
    while not all(dead(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(dead(c) for c in children)  # even the one inside time.sleep(60)
