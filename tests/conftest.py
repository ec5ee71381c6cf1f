"""Fixtures: every end-to-end test runs once on SQLite and once on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest

from chronoq import App
from chronoq.api import create_api
from chronoq.config import Settings
from chronoq.scheduler import Scheduler
from chronoq.worker import Worker, builtin_executors
from tests.processes import Proc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

PG_URL = os.environ.get("CHRONOQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'chronoq.db'}"
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_URL}?schema={schema}"
    await drop_schema(schema)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema (for tests that only make sense on PostgreSQL)."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield f"{PG_URL}?schema={schema}"
    await drop_schema(schema)


async def planner_rows(
    c: Any, n: int, every: int, rare: str, common: str, names: int = 1, queues: int = 4
) -> None:
    """Give PostgreSQL's planner a table worth an index, in transaction ``c``: ``n`` tasks,
    every ``every``-th one in status ``rare`` and the rest ``common``, over ``names``
    handlers and ``queues`` queues; analysed, and the transaction's plans made generic, as
    a worker's prepared statements become."""
    name = "'job'" if names == 1 else f"'job' || (g % {names})"
    await c.execute(
        "INSERT INTO tasks (id, name, queue, status, payload, run_at, created_at, "
        f"updated_at, max_attempts, backoff) SELECT 'x' || g, {name}, 'q' || (g % {queues}), "
        f"CASE WHEN g % {every} = 0 THEN '{rare}' ELSE '{common}' END, '{{}}', g, g, g, "
        f"1, '{{}}' FROM generate_series(1, {n}) g"
    )
    await c.execute("ANALYZE tasks")
    await c.execute("SET LOCAL plan_cache_mode = force_generic_plan")


class Harness:
    """An open App with the HTTP API (in-process transport), a scheduler and workers."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_api(app)), base_url="http://chronoq"
        )
        self.workers: list[tuple[Worker, asyncio.Task[None]]] = []
        self.scheduler: Scheduler | None = None
        self._scheduler_task: asyncio.Task[None] | None = None

    @property
    def store(self) -> Any:
        return self.app.store

    def start_scheduler(self) -> Scheduler:
        s = self.app.settings
        self.scheduler = Scheduler(self.store, poll_seconds=s.poll_seconds, reap_seconds=0.2)
        self._scheduler_task = asyncio.create_task(self.scheduler.run())
        return self.scheduler

    def start_worker(
        self,
        concurrency: int = 4,
        queues: Iterable[str] = ("default",),
        shell_allow: Iterable[str] = (),
        worker_id: str | None = None,
        shell_env_allow: Iterable[str] = (),
    ) -> Worker:
        s = self.app.settings
        builtin = builtin_executors(shell_allow, shell_env_allow=shell_env_allow)
        worker = Worker(
            self.store,
            {**builtin, **self.app.executors()},
            queues=queues,
            concurrency=concurrency,
            worker_id=worker_id,
            lease_seconds=s.lease_seconds,
            heartbeat_seconds=s.heartbeat_seconds,
            poll_seconds=s.poll_seconds,
        )
        self.workers.append((worker, asyncio.create_task(worker.run(drain_seconds=5))))
        return worker

    async def stop_workers(self) -> None:
        for worker, job in self.workers:
            worker.stop()
            await job
        self.workers.clear()

    async def submit(self, **spec: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/tasks", json=spec)
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def get(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_for(self, task_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the task reaches one of ``statuses``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if task["status"] in statuses:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"task {task_id} still {task['status']} after {timeout}s, "
                    f"wanted {statuses}: {task}"
                )
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.stop_workers()
        if self.scheduler is not None and self._scheduler_task is not None:
            self.scheduler.stop()
            await self._scheduler_task
        await self.http.aclose()
        await self.app.close()


def make_settings(db_url: str, **overrides: Any) -> Settings:
    overrides.setdefault("auth", False)
    return Settings(
        database_url=db_url, lease_seconds=2.0, heartbeat_seconds=0.3, poll_seconds=0.2, **overrides
    )


@pytest.fixture
def app(db_url: str) -> App:
    return App(settings=make_settings(db_url))


@asynccontextmanager
async def running(app: App) -> AsyncIterator[Harness]:
    """Open ``app`` and wrap it in a :class:`Harness`, closed on exit."""
    await app.open()
    h = Harness(app)
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
async def harness(app: App) -> AsyncIterator[Harness]:
    async with running(app) as h:
        yield h


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Real chronoq processes a test starts; any still running at the end are killed."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.kill()


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, spans kept in memory; off again afterwards (the
    OpenTelemetry SDK is imported only by the tests that ask for this)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from chronoq import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.tracer = provider.get_tracer("chronoq")
    try:
        yield exporter
    finally:
        tracing.tracer = None
        provider.shutdown()
