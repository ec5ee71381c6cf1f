"""Prometheus metrics (counters from events, store gauges, API latency), the deploy/ alert
rules and Grafana dashboard, and JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chronoq.app import App
from chronoq.events import EventBus, TaskEvent
from chronoq.logs import JsonFormatter, log_format, log_handler
from chronoq.metrics import OTHER, Metrics, Snapshot, metrics_for, parse_listen
from chronoq.models import TaskCreate
from tests.conftest import Harness
from tests.processes import ROOT, Proc, cli, free_port, wait_ready, wait_status
from tests.waiting import until

DEPLOY = ROOT / "deploy"
REDIS_URL = "redis://127.0.0.1:6379/0"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, labels) → value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """Sum of the samples of ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def event(
    status: str, attempt: int = 0, name: str = "job", queue: str = "default", **extra: Any
) -> TaskEvent:
    return TaskEvent("t1", name, queue, status, attempt, time.time(), **extra)


# -- counters and histograms from events -----------------------------------------------------
def test_events_become_counters_and_histograms() -> None:
    metrics = Metrics()
    metrics.observe(
        [
            event("queued"),  # submitted, runs now
            event("running", 1, wait=0.5),
            event("failed", 1, error="boom", duration=0.2),
            event("queued", 1),  # its retry came due
            event("running", 2, wait=-0.01),  # clock skew: counted as 0
            event("succeeded", 2, duration=1.5),
            event("scheduled", name="later"),  # submitted for later...
            event("queued", name="later"),  # ...and came due: submitted
            event("cancelled", name="later"),
            event("running", 1, name="bad", queue="q2", wait=20.0),
            event("dead", 1, name="bad", queue="q2", duration=3.0),
            event("queued", 1, name="bad", queue="q2"),  # manual retry from the DLQ
            TaskEvent("s", "x", "default", "queued", 0, 0.0, type="other"),  # not a task event
        ]
    )
    get = metrics.registry.get_sample_value
    job = {"queue": "default", "name": "job"}
    assert get("chronoq_tasks_submitted_total", job) == 1
    assert get("chronoq_tasks_started_total", job) == 2
    assert get("chronoq_tasks_failed_total", job) == 1
    assert get("chronoq_tasks_retried_total", job) == 1
    assert get("chronoq_tasks_succeeded_total", job) == 1
    assert get("chronoq_tasks_dead_total", job) == 0  # started at 0 with the others
    later = {"queue": "default", "name": "later"}
    assert get("chronoq_tasks_scheduled_total", later) == 1
    assert get("chronoq_tasks_submitted_total", later) == 1
    assert get("chronoq_tasks_cancelled_total", later) == 1
    bad = {"queue": "q2", "name": "bad"}
    assert get("chronoq_tasks_dead_total", bad) == 1
    assert get("chronoq_tasks_retried_total", bad) == 1
    assert get("chronoq_task_run_duration_seconds_count", job) == 2
    assert get("chronoq_task_run_duration_seconds_sum", job) == pytest.approx(1.7)
    assert get("chronoq_task_run_duration_seconds_bucket", {**job, "le": "1.0"}) == 1
    assert get("chronoq_task_queue_wait_seconds_count", {"queue": "default"}) == 2
    assert get("chronoq_task_queue_wait_seconds_bucket", {"queue": "default", "le": "0.001"}) == 1
    assert get("chronoq_task_queue_wait_seconds_bucket", {"queue": "q2", "le": "10.0"}) == 0
    assert get("chronoq_task_run_duration_seconds_count", bad) == 1


def test_label_pairs_are_bounded() -> None:
    metrics = Metrics(max_series=2)
    metrics.observe([event("queued", name=f"n{i}", queue=f"q{i}") for i in range(5)])
    samples = parse(generate_latest(metrics.registry).decode())
    seen = {
        dict(labels)["name"] for name, labels in samples if name == "chronoq_tasks_submitted_total"
    }
    assert seen == {"n0", "n1", OTHER}
    assert value(samples, "chronoq_tasks_submitted_total", queue=OTHER, name=OTHER) == 3


async def test_only_this_process_events_are_counted() -> None:
    """With the Redis bridge, other processes' events reach the bus too; metrics skip them,
    so summing over processes counts each change once."""
    here, there = EventBus(REDIS_URL), EventBus(REDIS_URL)
    await here.start()
    await there.start()
    metrics = Metrics()
    metrics.start(SimpleNamespace(events=here))  # type: ignore[arg-type]
    try:
        with here.subscribe() as everything:
            await asyncio.wait_for(here.listening.wait(), 10)  # Redis drops unheard events
            there.publish([event("succeeded", 1, name="remote", duration=0.1)])
            assert (await asyncio.wait_for(anext(everything), 5))[0].name == "remote"
            here.publish([event("succeeded", 1, name="local", duration=0.1)])
            await asyncio.wait_for(anext(everything), 5)
        get = metrics.registry.get_sample_value

        async def counted() -> bool:  # the remote event came first: it was seen by then
            return get("chronoq_tasks_succeeded_total", {"queue": "default", "name": "local"}) == 1

        await until(counted, "the local event was not counted", timeout=5)
        assert get("chronoq_tasks_succeeded_total", {"queue": "default", "name": "remote"}) is None
    finally:
        await metrics.stop()
        await here.close()
        await there.close()


# -- the API's /metrics, in process ----------------------------------------------------------
async def test_api_metrics_route_templates_and_store_gauges(harness: Harness) -> None:
    harness.app.task("ok")(lambda: "fine")
    harness.start_worker(concurrency=3)
    harness.start_scheduler()
    ids = [(await harness.submit(name="ok"))["id"] for _ in range(3)]
    for task_id in ids:
        await harness.wait_for(task_id, "succeeded")
    later = await harness.submit(name="ok", delay_seconds=60)
    assert (await harness.http.post(f"/v1/tasks/{later['id']}/cancel")).status_code == 200
    assert (await harness.http.get("/v1/tasks/not-an-id")).status_code == 422
    assert (await harness.http.get("/nowhere")).status_code == 404
    deadline = time.monotonic() + 5
    while True:  # the lease is taken on the scheduler's first round
        response = await harness.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = parse(response.text)
        if value(samples, "chronoq_scheduler_lease_held") == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)

    ok = {"queue": "default", "name": "ok"}
    assert value(samples, "chronoq_tasks_submitted_total", **ok) == 3
    assert value(samples, "chronoq_tasks_scheduled_total", **ok) == 1
    assert value(samples, "chronoq_tasks_succeeded_total", **ok) == 3
    assert value(samples, "chronoq_tasks_cancelled_total", **ok) == 1
    assert value(samples, "chronoq_task_run_duration_seconds_count", **ok) == 3
    assert value(samples, "chronoq_task_queue_wait_seconds_count", queue="default") == 3
    assert value(samples, "chronoq_queue_depth", queue="default", status="succeeded") == 3
    assert value(samples, "chronoq_queue_depth", queue="default", status="cancelled") == 1
    assert value(samples, "chronoq_queue_depth", queue="default", status="queued") == 0
    assert value(samples, "chronoq_workers_alive") == 1
    assert value(samples, "chronoq_worker_slots") == 3
    assert value(samples, "chronoq_worker_busy_slots") == 0
    assert value(samples, "chronoq_schedule_lag_seconds") == 0
    assert value(samples, "chronoq_scheduler_lease_held") == 1
    assert value(samples, "chronoq_store_up") == 1
    routes = {
        dict(labels)["route"]
        for name, labels in samples
        if name == "chronoq_http_request_duration_seconds_count"
    }
    assert routes == {
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/cancel",
        "unmatched",
    }  # templates, never ids; /metrics is timed after the render
    http = "chronoq_http_request_duration_seconds_count"
    assert value(samples, http, method="POST", route="/v1/tasks", status="201") == 4
    assert value(samples, http, method="GET", route="/v1/tasks/{task_id}", status="422") == 1
    assert value(samples, http, method="GET", route="unmatched", status="404") == 1
    again = parse((await harness.http.get("/metrics")).text)
    assert value(again, http, method="GET", route="/metrics", status="200") == 1


async def test_store_gauges_from_a_scrape_thread(harness: Harness) -> None:
    """prometheus_client's own HTTP server collects in a thread: the collector then runs
    the store queries on the event loop and waits for them."""
    await harness.submit(name="nobody.handles.this")
    metrics = metrics_for(harness.app)
    metrics.start(harness.store)
    assert metrics.snapshot is None
    text = (await asyncio.to_thread(generate_latest, metrics.registry)).decode()
    samples = parse(text)
    assert value(samples, "chronoq_queue_depth", queue="default", status="queued") == 1
    assert value(samples, "chronoq_workers_alive") == 0
    await metrics.stop()


# -- deploy/: alert rules and the Grafana dashboard ------------------------------------------
def exported_metric_names() -> set[str]:
    """Every sample name chronoq's metrics produce once each kind of event, request and
    store gauge has been seen."""
    metrics = Metrics()
    metrics.observe(
        [
            event("scheduled"),
            event("queued"),
            event("running", 1, wait=0.1),
            event("failed", 1, duration=0.1),
            event("queued", 1),
            event("running", 2, wait=0.1),
            event("dead", 2, duration=0.1),
            event("succeeded", 2, duration=0.1),
            event("cancelled", 2),
        ]
    )
    metrics.observe_request("GET", "/v1/tasks", 200, 0.01)
    metrics.snapshot = Snapshot(
        time.time(), True, [("default", "queued", 1)], [("default", 1.0)], 1, 1, 8, 0.0, True
    )
    return names(parse(generate_latest(metrics.registry).decode()))


def check_expr(expr: str, exported: set[str]) -> None:
    used = set(re.findall(r"\bchronoq_[a-z0-9_]+", expr))
    assert used, f"no chronoq metric in {expr!r}"
    assert used <= exported, f"{sorted(used - exported)} are not exported (in {expr!r})"


def test_dashboard_panels_query_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "chronoq.json").read_text())
    exported = exported_metric_names()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    titles = {p["title"] for p in panels}
    assert {
        "Throughput",
        "Run duration p50 / p95 / p99",
        "Queue wait p50 / p95 / p99",
        "Queue depth by queue",
        "Failures and dead letters",
        "Workers alive",
        "Busy slots",
    } <= titles
    quantiles = [
        t["expr"] for p in panels for t in p["targets"] if "histogram_quantile" in t["expr"]
    ]
    for metric in (
        "chronoq_task_run_duration_seconds_bucket",
        "chronoq_task_queue_wait_seconds_bucket",
    ):
        found = [q for q in quantiles if metric in q]
        assert {q.split(",")[0] for q in found} >= {
            "histogram_quantile(0.5",
            "histogram_quantile(0.95",
            "histogram_quantile(0.99",
        }
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            check_expr(target["expr"], exported)
    for name in ("queue", "name"):
        check_expr(variables[name]["query"]["query"], exported)


def test_alert_rules_query_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {
        "ChronoqQueueWaitHigh",
        "ChronoqSchedulingLagHigh",
        "ChronoqTaskFailureRateHigh",
        "ChronoqDeadLetterQueueGrowing",
        "ChronoqNoWorkersAlive",
        "ChronoqNoSchedulerLeader",
    } <= set(alerts)
    exported = exported_metric_names()
    for rule in alerts.values():
        check_expr(rule["expr"], exported)


def promtool() -> str:
    """promtool, installed with Debian's ``prometheus`` package if missing and possible."""
    found = shutil.which("promtool")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "prometheus"],
            capture_output=True,
            timeout=600,
            check=False,
        )
        found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed and cannot be (apt-get install prometheus)")
    return found


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    tool = promtool()
    for args in (
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ):
        result = subprocess.run(
            [tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


# -- real processes ----------------------------------------------------------------------------
def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def scrape_until(url: str, check: Any, timeout: float = 15) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_dev_and_worker_processes_serve_metrics(
    db_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    port, worker_port = free_port(), free_port()
    url, worker_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{worker_port}"
    env = {
        "CHRONOQ_DATABASE_URL": db_url,
        "CHRONOQ_POLL_SECONDS": "0.2",
        "RECORD_FILE": str(tmp_path / "record.txt"),
    }
    dev = Proc(["dev", "--demo", "--port", str(port)], env, tmp_path / "dev.log")
    procs.append(dev)
    wait_ready(url, dev)
    worker = Proc(
        [
            "worker",
            "--app",
            "tests.apps.recorder:app",
            "--queues",
            "elsewhere",
            "--metrics-port",
            str(worker_port),
        ],
        {**env, "CHRONOQ_LOG_FORMAT": "text"},
        tmp_path / "worker.log",
    )
    procs.append(worker)

    with httpx.Client(base_url=url, timeout=10) as http:
        ids = [
            http.post("/v1/tasks", json={"name": "demo.add", "payload": {"a": i, "b": 1}}).json()[
                "id"
            ]
            for i in range(3)
        ]
        flaky = http.post(
            "/v1/tasks",
            json={
                "name": "demo.flaky",
                "payload": {"succeed_on_attempt": 2},
                "backoff": {"base": 0.1, "jitter": 0},
            },
        ).json()["id"]
        dead = http.post("/v1/tasks", json={"name": "demo.fail", "max_attempts": 1}).json()
        elsewhere = http.post("/v1/tasks", json={"name": "record", "queue": "elsewhere"}).json()
    for task_id in [*ids, flaky]:
        wait_status(url, task_id, "succeeded")
    wait_status(url, dead["id"], "dead")
    wait_status(url, elsewhere["id"], "succeeded")

    add = {"queue": "default", "name": "demo.add"}
    samples = scrape_until(url, lambda s: total(s, "chronoq_tasks_succeeded_total", **add) >= 3)
    assert total(samples, "chronoq_tasks_submitted_total", **add) >= 3
    assert total(samples, "chronoq_tasks_succeeded_total", **add) >= 3
    assert total(samples, "chronoq_task_run_duration_seconds_count", **add) >= 3
    assert total(samples, "chronoq_task_queue_wait_seconds_count", queue="default") >= 5
    flaky_labels = {"queue": "default", "name": "demo.flaky"}
    assert total(samples, "chronoq_tasks_failed_total", **flaky_labels) >= 1
    assert total(samples, "chronoq_tasks_retried_total", **flaky_labels) >= 1
    assert total(samples, "chronoq_tasks_dead_total", queue="default", name="demo.fail") >= 1
    assert value(samples, "chronoq_queue_depth", queue="default", status="queued") is not None
    assert (value(samples, "chronoq_queue_depth", queue="default", status="dead") or 0) >= 1
    assert value(samples, "chronoq_queue_depth", queue="elsewhere", status="succeeded") == 1
    assert value(samples, "chronoq_scheduler_leader") == 1
    assert value(samples, "chronoq_scheduler_lease_held") == 1
    assert value(samples, "chronoq_store_up") == 1
    assert value(samples, "chronoq_workers_alive") == 2  # its own worker and the other one
    assert (
        total(
            samples,
            "chronoq_http_request_duration_seconds_count",
            method="POST",
            route="/v1/tasks",
            status="201",
        )
        >= 6
    )
    assert (
        total(samples, "chronoq_http_request_duration_seconds_count", route="/v1/tasks/{task_id}")
        >= 1
    )
    assert "process_resident_memory_bytes" in names(samples)
    assert not any(n.endswith("_created") for n in names(samples))
    # the API counted the submit to "elsewhere", but not the other process's run of it
    other = {"queue": "elsewhere", "name": "record"}
    assert value(samples, "chronoq_tasks_submitted_total", **other) == 1
    assert value(samples, "chronoq_tasks_succeeded_total", **other) == 0

    theirs = scrape(worker_url)
    assert value(theirs, "chronoq_tasks_started_total", **other) == 1
    assert value(theirs, "chronoq_tasks_succeeded_total", **other) == 1
    assert value(theirs, "chronoq_tasks_submitted_total", **other) == 0
    assert value(theirs, "chronoq_task_queue_wait_seconds_count", queue="elsewhere") == 1
    assert value(theirs, "chronoq_scheduler_leader") == 0
    assert "chronoq_queue_depth" not in names(theirs)  # store gauges: API and scheduler only
    assert httpx.get(f"{worker_url}/nope").status_code == 404

    assert worker.terminate() == 0
    assert dev.terminate() == 0
    # stderr is not a terminal: JSON lines, unless CHRONOQ_LOG_FORMAT=text
    lines = [json.loads(line) for line in dev.output().splitlines() if line.strip()]
    assert all({"timestamp", "level", "logger", "message"} <= set(e) for e in lines)
    banner = next(e for e in lines if e["message"].endswith("dev is running"))
    assert banner["api"] == url and "demo.add" in banner["handlers"]
    assert any(e["logger"] == "chronoq.worker" and "stopped" in e["message"] for e in lines)
    text = worker.output()
    assert " INFO    chronoq.worker: worker " in text and not text.lstrip().startswith("{")


def test_scheduler_processes_report_the_leader(tmp_path: Path, procs: list[Proc]) -> None:
    env = {"CHRONOQ_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    urls = []
    for n in (1, 2):
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        procs.append(
            Proc(["scheduler", "--metrics-port", f"127.0.0.1:{port}"], env, tmp_path / f"s{n}.log")
        )
        if n == 1:  # let the first one take the lease
            scrape_until_up(urls[0], procs[0])
            scrape_until(urls[0], lambda s: value(s, "chronoq_scheduler_leader") == 1)
    scrape_until_up(urls[1], procs[1])
    # the store gauges are a snapshot re-read at most once a second (and left out when a
    # read timed out): one taken before the lease was won says 0 for a moment
    for url in urls:
        scrape_until(url, lambda s: value(s, "chronoq_scheduler_lease_held") == 1)
    both = [scrape(url) for url in urls]
    assert [value(s, "chronoq_scheduler_leader") for s in both] == [1, 0]
    assert all(value(s, "chronoq_scheduler_lease_held") == 1 for s in both)
    assert all(value(s, "chronoq_workers_alive") == 0 for s in both)
    for proc in procs:
        assert proc.terminate() == 0, proc.output()


def scrape_until_up(url: str, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.args} exited early:\n{proc.output()}")
        try:
            if httpx.get(f"{url}/metrics", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.args} serves no metrics after {timeout}s:\n{proc.output()}")


def test_metrics_port_is_prometheus_clients_exposition(tmp_path: Path, procs: list[Proc]) -> None:
    """``--metrics-port 0``: a free port, named in the startup line; prometheus_client's
    exposition answers there (negotiation, gzip, name[] filters) with fresh store gauges."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"CHRONOQ_DATABASE_URL": db, "CHRONOQ_LOG_FORMAT": "text"}
    proc = Proc(["scheduler", "--metrics-port", "0"], env, tmp_path / "s.log")
    procs.append(proc)
    deadline = time.monotonic() + 20
    while not (
        found := re.search(r"serving metrics on (http://127\.0\.0\.1:\d+)/metrics", proc.output())
    ):
        assert proc.popen.poll() is None and time.monotonic() < deadline, proc.output()
        time.sleep(0.05)
    url = found[1]
    assert value(scrape(url), "chronoq_queue_depth", queue="default", status="queued") is None

    async def submit() -> None:
        async with App(db) as app:
            await app.submit(TaskCreate(name="nobody.runs.this"))

    asyncio.run(submit())
    depth = "chronoq_queue_depth"  # re-read from the store at most once a second
    samples = scrape_until(url, lambda s: value(s, depth, queue="default", status="queued"), 5)
    assert value(samples, depth, queue="default", status="queued") == 1

    with httpx.Client(base_url=url, timeout=10) as http:
        open_metrics = http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.endswith("# EOF\n")
        zipped = http.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip" and "chronoq_store_up" in zipped.text
        only = parse(http.get("/metrics", params={"name[]": "chronoq_store_up"}).text)
        assert names(only) == {"chronoq_store_up"}
        head = http.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        for path in ("/", "/healthz"):
            assert http.get(path).text == "chronoq metrics: see /metrics\n"
        assert http.get("/nope").status_code == 404
        assert http.post("/metrics").status_code == 405
    assert proc.terminate() == 0, proc.output()


def test_taken_metrics_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "worker",
            "--metrics-port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp_path / 'x.db'}",
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_metrics_port_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chronoq.cli",
            "worker",
            "--metrics-port",
            "nine",
            "--database-url",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--metrics-port" in result.stderr


def test_parse_listen() -> None:
    assert parse_listen("9100", "127.0.0.1") == ("127.0.0.1", 9100)
    assert parse_listen("0.0.0.0:9100", "127.0.0.1") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:9100", "127.0.0.1") == ("::1", 9100)
    with pytest.raises(ValueError):
        parse_listen("host:port", "127.0.0.1")


# -- logs ----------------------------------------------------------------------------------------
def test_json_formatter_fields_extras_and_exceptions() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("chronoq.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "task %s failed",
            "t1",
            extra={
                "task_id": "t1",
                "attempt": 2,
                "queue": "default",
                "worker": "w:1",
                "when": time.gmtime(0),
            },
        )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it broke")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["timestamp"])
    assert {
        k: first[k] for k in ("level", "logger", "message", "task_id", "attempt", "queue", "worker")
    } == {
        "level": "WARNING",
        "logger": "chronoq.test.json",
        "message": "task t1 failed",
        "task_id": "t1",
        "attempt": 2,
        "queue": "default",
        "worker": "w:1",
    }
    assert "time.struct_time" in first["when"]  # anything JSON cannot hold: its repr
    assert "exception" not in first and "args" not in first and "msg" not in first
    assert second["level"] == "ERROR" and second["message"] == "it broke"
    assert "RuntimeError: boom" in second["exception"]


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        (None, False, "json"),
        (None, True, "text"),
        ("auto", False, "json"),
        ("json", True, "json"),
        ("text", False, "text"),
        ("JSON", True, "json"),
    ],
)
def test_log_format_follows_the_terminal_unless_told(
    monkeypatch: pytest.MonkeyPatch, env: str | None, tty: bool, expected: str
) -> None:
    if env is None:
        monkeypatch.delenv("CHRONOQ_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("CHRONOQ_LOG_FORMAT", env)
    stream = Stream(tty)
    assert log_format(stream) == expected
    handler = log_handler(stream)
    handler.handle(
        logging.LogRecord("chronoq", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    )
    line = stream.getvalue().strip()
    if expected == "json":
        assert json.loads(line)["message"] == "hello there"
    else:
        assert line.endswith("INFO    chronoq: hello there")


def test_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    monkeypatch.setenv("CHRONOQ_LOG_FORMAT", "xml")
    with pytest.raises(click.UsageError):
        log_format(Stream(False))
