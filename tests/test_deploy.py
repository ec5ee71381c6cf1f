"""The deployment files: the Kubernetes manifests render and validate offline (Kubernetes
schemas, and the KEDA / Prometheus operator CRD schemas in tests/data/crds), the compose
file validates, and the exact commands, arguments and environment of the compose services
and the Kubernetes containers run for real here, against local PostgreSQL and Redis, so the
manifests cannot drift from the CLI. A container runtime that can build, builds the image.
"""

from __future__ import annotations

import base64
import copy
import functools
import inspect
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from chronoq.worker import Worker
from deploy.kubernetes import sync_rules
from tests.processes import ROOT, Proc, cli, free_port, wait_ready

DEPLOY = ROOT / "deploy"
OVERLAYS = ["dev", "production"]
CRDS = ROOT / "tests" / "data" / "crds"
#: the oldest and the newest Kubernetes the manifests are checked against
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
#: Redis databases of their own (other tests use 0, 3 and 9), emptied before each run
REDIS_DB_BASE = 12


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed")
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "kubernetes/overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` refusing unknown fields, as ``kubectl apply`` (strict field validation)
    does, except where the CRD keeps them (``x-kubernetes-preserve-unknown-fields``)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in CRDS.glob("*.json"):
        crd = json.loads(path.read_text())
        schemas[crd["apiVersion"], crd["kind"]] = strict(crd["schema"])
    return schemas


def validate(doc: dict[str, Any]) -> None:
    custom = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if custom is not None:  # no check_schema: CRDs hold Go regexes, e.g. ^(?i)(abort|warn)?$
        jsonschema.Draft7Validator(custom).validate(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# -- the manifests render and validate ---------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_manifests_render_and_validate(overlay: str) -> None:
    docs = rendered(overlay)
    for doc in docs:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            raise AssertionError(
                f"{overlay}: {doc['kind']} {doc['metadata']['name']}: "
                f"{exc.message} at {list(exc.path)}"
            ) from None
    kinds = {
        (
            d["kind"],
            d["metadata"]["name"].rsplit("-", 1)[0]
            if d["kind"] == "Secret"
            else d["metadata"]["name"],
        )
        for d in docs
    }
    expected = {
        ("Deployment", "chronoq-api"),
        ("Deployment", "chronoq-scheduler"),
        ("Deployment", "chronoq-worker"),
        ("Service", "chronoq-api"),
        ("ConfigMap", "chronoq-config"),
        ("Job", "chronoq-migrate"),
        ("HorizontalPodAutoscaler", "chronoq-api"),
        *(("PodDisruptionBudget", f"chronoq-{c}") for c in ("api", "scheduler", "worker")),
    }
    if overlay == "production":
        expected |= {
            ("ScaledObject", "chronoq-worker"),
            ("ServiceMonitor", "chronoq"),
            ("PrometheusRule", "chronoq"),
        }
    else:
        expected.add(("Secret", "chronoq-database"))
    assert expected <= kinds, expected - kinds


def test_the_validation_catches_mistakes() -> None:
    """The checks above fail on a misspelt field, in a core object and in a CRD object."""
    worker = copy.deepcopy(named(rendered("dev"), "Deployment", "chronoq-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(worker)
    scaled = copy.deepcopy(named(rendered("production"), "ScaledObject", "chronoq-worker"))
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    del scaled["spec"]["minReplicas"], scaled["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if (
            doc["kind"] in ("Deployment", "Job")
            and doc["metadata"]["name"].startswith("chronoq-")
            and doc["metadata"]["name"] not in ("chronoq-postgres", "chronoq-redis")
        ):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_grace_periods_and_secrets(overlay: str) -> None:
    docs = rendered(overlay)
    drain = inspect.signature(Worker.run).parameters["drain_seconds"].default
    for name, pod in _pod_specs(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            ports = {p["name"] for p in container.get("ports", [])}
            if name != "chronoq-migrate":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert container[probe]["httpGet"]["port"] in ports, (name, probe)
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        if name == "chronoq-worker":
            assert pod["terminationGracePeriodSeconds"] >= drain + 5
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]
        for d in docs
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    assert "chronoq-api" in scaled
    if overlay == "production":  # an apply must not reset what the autoscalers set
        assert "chronoq-worker" in scaled
        for name in scaled:
            assert "replicas" not in named(docs, "Deployment", name)["spec"], name
    if overlay == "dev":  # every Secret the pods read is in the overlay
        secrets = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "Secret"}
        for name, pod in _pod_specs(docs):
            for env in pod["containers"][0].get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), (name, ref)


def test_prometheus_rule_is_alerts_yml() -> None:
    rule = named(rendered("production"), "PrometheusRule", "chronoq")
    assert rule["spec"] == sync_rules.rule_object()["spec"], (
        "run python deploy/kubernetes/sync_rules.py"
    )
    path = DEPLOY / "kubernetes/overlays/production/prometheusrule.yaml"
    assert path.read_text() == sync_rules.render()


# -- compose ---------------------------------------------------------------------------------
def _compose_tool() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no compose tool: neither `docker compose` nor `docker-compose`")


def test_compose_file_validates(tmp_path: Path) -> None:
    compose = DEPLOY / "compose.yaml"
    out = subprocess.run(
        [*_compose_tool(), "-f", str(compose), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    broken = tmp_path / "compose.yaml"  # and the tool does refuse a bad file
    broken.write_text(
        compose.read_text().replace("condition: service_healthy", "condition: healthy-ish", 1)
    )
    out = subprocess.run(
        [*_compose_tool(), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0


def test_compose_dependencies_and_prometheus_config() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    chronoq = {n for n, s in services.items() if s.get("image", "").startswith("chronoq")}
    assert chronoq == {"migrate", "api", "scheduler-1", "scheduler-2", "worker-1", "worker-2"}
    for name in chronoq - {"migrate"}:
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert "healthcheck" in services[name], name
    drain = inspect.signature(Worker.run).parameters["drain_seconds"].default
    assert float(services["worker-1"]["stop_grace_period"].rstrip("s")) >= drain + 5
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    out = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- the exact commands run ------------------------------------------------------------------
def test_image_entrypoint_is_chronoq() -> None:
    """Compose ``command`` and Kubernetes ``args`` are arguments of ``chronoq``."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["chronoq"]' in dockerfile
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile


def compose_processes() -> dict[str, tuple[list[str], dict[str, str]]]:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return {
        name: (
            [str(a) for a in s["command"]],
            {k: str(v) for k, v in s.get("environment", {}).items()},
        )
        for name, s in services.items()
        if s.get("image", "").startswith("chronoq")
    }


def kubernetes_processes() -> dict[str, tuple[list[str], dict[str, str]]]:
    docs = rendered("dev")
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    found = {}
    for name, pod in _pod_specs(docs):
        (container,) = pod["containers"]
        assert "command" not in container, "the image's entrypoint runs"
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env |= maps[source["configMapRef"]["name"]]
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]
                if "secretKeyRef" in ref:
                    env[item["name"]] = secrets[ref["secretKeyRef"]["name"]][
                        ref["secretKeyRef"]["key"]
                    ]
                else:
                    key = ref["configMapKeyRef"]
                    env[item["name"]] = maps[key["name"]][key["key"]]
        found[name.removeprefix("chronoq-")] = (list(container["args"]), env)
    return found


class Rewrite:
    """Only what must change to run here: host names and ports, the database (the test's
    schema) and the Redis database numbers (ones of its own)."""

    def __init__(self, pg_url: str) -> None:
        self.pg_url = pg_url
        self.ports: dict[int, int] = {}

    def __call__(self, value: str) -> str:
        if value.startswith("postgresql://"):
            return self.pg_url
        value = re.sub(
            r"redis://[^/]+/(\d+)",
            lambda m: f"redis://127.0.0.1:6379/{REDIS_DB_BASE + int(m[1])}",
            value,
        )
        value = re.sub(r"^0\.0\.0\.0:(\d+)$", lambda m: f"127.0.0.1:{self.port(int(m[1]))}", value)
        if value == "0.0.0.0":
            return "127.0.0.1"
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        return value

    def port(self, port: int) -> int:
        return self.ports.setdefault(port, free_port())


@pytest.mark.slow
@pytest.mark.parametrize("source", ["compose", "kubernetes"])
def test_deployed_commands_run_a_task(
    source: str, pg_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    processes = compose_processes() if source == "compose" else kubernetes_processes()
    assert {n.rstrip("-12") for n in processes} == {"migrate", "api", "scheduler", "worker"}
    for db in (REDIS_DB_BASE, REDIS_DB_BASE + 1):
        redis.Redis(port=6379, db=db).flushdb()
    rewrites: dict[str, Rewrite] = {}
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for name, (args, env) in processes.items():
        rewrite = rewrites[name] = Rewrite(pg_url)
        rewrite.port(8000)  # the API's --port and CHRONOQ_PORT (a bare number)
        commands[name] = ([rewrite(a) for a in args], {k: rewrite(v) for k, v in env.items()})

    migrate_args, migrate_env = commands.pop("migrate")
    migrate = Proc(migrate_args, migrate_env, tmp_path / "migrate.log")
    assert migrate.popen.wait(60) == 0, migrate.output()
    assert "applied migrations" in migrate.output()

    started = {
        name: Proc(args, env, tmp_path / f"{name}.log") for name, (args, env) in commands.items()
    }
    procs.extend(started.values())
    api_name = next(n for n in started if n.startswith("api"))
    api_url = f"http://127.0.0.1:{rewrites[api_name].ports[8000]}"
    for name, proc in started.items():
        health = commands[name][1].get("CHRONOQ_HEALTH_PORT")
        if name == api_name:
            assert health is None
            wait_ready(api_url, proc, timeout=30)
        else:  # every scheduler and worker serves its health port
            assert health is not None and health.startswith("127.0.0.1:"), (name, health)
            wait_ready(f"http://{health}", proc, timeout=30)
            assert httpx.get(f"http://{health}/healthz").json() == {"status": "ok"}

    headers = {}
    if commands[api_name][1].get("CHRONOQ_AUTH", "true").lower() not in ("0", "false"):
        made = cli("keys", "create", "deploy-test", env={"CHRONOQ_DATABASE_URL": pg_url})
        assert made.returncode == 0, made.stderr
        headers["Authorization"] = f"Bearer {made.stdout.splitlines()[0]}"
        assert httpx.get(f"{api_url}/v1/tasks", timeout=5).status_code == 401
    with httpx.Client(base_url=api_url, headers=headers, timeout=5) as http:
        response = http.post("/v1/tasks", json={"name": "demo.add", "payload": {"a": 2, "b": 3}})
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        deadline = time.monotonic() + 20
        while (task := http.get(f"/v1/tasks/{task_id}").json())["status"] != "succeeded":
            assert task["status"] in ("queued", "running"), task
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
        assert task["result"] == 5
        # the metric KEDA's trigger queries is served
        assert "# TYPE chronoq_queue_depth gauge" in http.get("/metrics").text

    for name, proc in started.items():
        assert proc.terminate(30) == 0, f"{name}:\n{proc.output()}"


# -- the image -------------------------------------------------------------------------------
def test_image_builds_and_runs(tmp_path: Path) -> None:
    runtime = shutil.which("podman") or shutil.which("docker")
    if runtime is None:
        pytest.skip("no container runtime (podman or docker) on this machine")
    if subprocess.run([runtime, "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(f"{runtime} cannot reach a container engine here")
    tag = "localhost/chronoq-test:latest"
    build = subprocess.run(
        [runtime, "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0:
        pulls = ("registry", "pull", "lookup", "dial tcp", "no such host", "manifest unknown")
        if any(word in build.stderr for word in pulls):
            last = build.stderr.strip().splitlines()[-1]
            pytest.skip(f"{runtime} cannot pull the python:3.11-slim base image: {last}")
        raise AssertionError(build.stdout + build.stderr)
    shown = subprocess.run(
        [runtime, "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "chronoq" in shown.stdout, shown.stderr
    user = subprocess.run(
        [runtime, "run", "--rm", "--entrypoint", "id", tag, "-u"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert user.stdout.strip() == "10001"
    demo = subprocess.run(
        [
            runtime,
            "run",
            "--rm",
            "--entrypoint",
            "timeout",
            tag,
            "-s",
            "INT",
            "15",
            "chronoq",
            "dev",
            "--demo",
            "--database-url",
            "sqlite:////tmp/chronoq.db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "demo: submitted demo.add" in demo.stderr, demo.stderr
