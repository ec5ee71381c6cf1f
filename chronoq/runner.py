"""Run chronoq components — API, scheduler, workers — in one process until a signal.

``chronoq dev`` runs all three on one open store (in-process wake-ups, no polling);
``chronoq api|scheduler|worker`` run one each, for distributed deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import prometheus_client
import uvicorn

from chronoq.api import create_api
from chronoq.app import App
from chronoq.broker import Broker, BrokerFactory, Consumer
from chronoq.executors import Executor
from chronoq.health import Readiness, health_app
from chronoq.metrics import Metrics, metrics_app, metrics_for
from chronoq.pool import PoolExecutor, ProcessPool, child_command
from chronoq.retention import sweeper_for
from chronoq.scheduler import Scheduler
from chronoq.worker import Worker, builtin_executors

if TYPE_CHECKING:
    from fastapi import FastAPI

    from chronoq.grpc.server import GrpcServer

log = logging.getLogger("chronoq")

#: a process-pool worker claims this many tasks per child ahead (Celery's default too): the
#: next task is at hand when a child finishes, without a claim round trip in between
PREFETCH_PER_PROCESS = 4


class StoreUnavailable(Exception):
    """The database could not be opened: the message is one line naming where and why."""


#: what opening a store raises for a URL that points nowhere usable: a host that does not
#: resolve or answer, a database or role that does not exist, a file that cannot be opened,
#: a scheme chronoq does not know
OPEN_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sqlite3.Error,
    ValueError,
)


def store_unavailable(url: str, exc: Exception) -> StoreUnavailable:
    """One line for ``exc``, raised while opening the store at ``url`` (no password)."""
    reason = str(exc).replace(url, hide_password(url)) or "no reason given"
    return StoreUnavailable(
        f"cannot open the database at {database_location(url)}: {type(exc).__name__}: {reason}"
    )


def database_location(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, the file of a SQLite one, else the URL
    (its password hidden)."""
    if url.startswith("sqlite://"):
        return url.removeprefix("sqlite:///") or "chronoq.db"
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        return hide_password(url)
    try:
        port = parts.port or 5432
    except ValueError:
        return hide_password(url)
    host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
    return f"{host}:{port}/{parts.path.lstrip('/') or parts.username or 'postgres'}"


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@/]+@", r"\1***@", url)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner stops everything together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Components:
    api: bool = True
    scheduler: bool = True
    worker: bool = True
    queues: list[str] = field(default_factory=lambda: ["default"])
    concurrency: int = 8
    shell_allow: list[str] = field(default_factory=list)
    #: environment variable names chronoq.shell payloads may set
    shell_env_allow: list[str] = field(default_factory=list)
    #: hostnames and CIDRs whose non-public addresses chronoq.http may call
    http_allow: list[str] = field(default_factory=list)
    worker_id: str | None = None
    drain_seconds: float = 30.0
    #: serve Prometheus /metrics on this port (the API serves it on its own port anyway)
    metrics_port: int | None = None
    #: address for ``metrics_port`` (default: the settings' host)
    metrics_host: str | None = None
    #: serve /healthz and /readyz on this port (the API serves them on its own port anyway)
    health_port: int | None = None
    #: address for ``health_port`` (default: the settings' host)
    health_host: str | None = None
    #: serve the gRPC API beside the REST API on this port of the settings' host (0: any)
    grpc_port: int | None = None
    autoscale: tuple[int, int] | None = None
    #: where Python handlers run: "async" (the worker process) or "process" (children)
    pool: str = "async"
    #: children of the process pool (default: the CPU count)
    processes: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    #: tasks a worker claims beyond its slots (default: 4 per child with a process pool,
    #: none with the async pool)
    prefetch: int | None = None
    #: the demo handlers are registered (children register them too)
    demo: bool = False

    def slots(self, processes: int | None) -> tuple[int, int]:
        """The worker's (concurrency, prefetch): ``processes`` children of a process pool
        run one task each, with 4 claimed ahead per child unless ``prefetch`` says."""
        if processes is None:
            return self.concurrency, self.prefetch or 0
        default = PREFETCH_PER_PROCESS * processes
        return processes, default if self.prefetch is None else self.prefetch


class Runner:
    """Owns the components' lifecycles: start together, stop together on SIGINT/SIGTERM."""

    def __init__(self, app: App, components: Components) -> None:
        self.app = app
        self.components = components
        self.server: _Server | None = None
        self.scheduler: Scheduler | None = None
        self.worker: Worker | None = None
        self.pool: ProcessPool | None = None
        self.metrics: Metrics | None = None
        self.metrics_server: _Server | None = None
        self._metrics_job: asyncio.Task[None] | None = None
        self.health_server: _Server | None = None
        self.grpc: GrpcServer | None = None
        self._readiness: Readiness | None = None
        self.started = asyncio.Event()
        self._stop_requested = False

    def executors(self) -> dict[str, Executor]:
        """Built-in executors, then the app's handlers: in the process pool when they run
        there (``--pool process`` or ``@app.task(pool="process")``)."""
        c = self.components
        executors = {
            **builtin_executors(c.shell_allow, c.http_allow, c.shell_env_allow),
            **self.app.executors(),
        }
        if self.pool is not None:
            in_pool = PoolExecutor(self.pool)
            executors.update(dict.fromkeys(self.process_handlers(), in_pool))
        return executors

    def process_handlers(self) -> list[str]:
        """The app's handlers that run in child processes."""
        return [
            name
            for name, fn in self.app.tasks.items()
            if (fn.pool or self.components.pool) == "process"
        ]

    def _make_pool(self) -> ProcessPool | None:
        c = self.components
        if c.pool != "process" and not self.process_handlers():
            return None
        processes = c.processes or os.cpu_count() or 1
        return ProcessPool(
            child_command(self.app.settings.app, demo=c.demo),
            processes,
            max_tasks_per_child=c.max_tasks_per_child,
            max_memory_mib=c.max_memory_per_child,
        )

    def stop(self) -> None:
        if self._stop_requested and self.server is not None:
            self.server.force_exit = True
        if self._stop_requested and self.worker is not None:
            log.warning("second stop signal: ending running tasks now; they will be retried")
            self.worker.stop_now()
        self._stop_requested = True
        if self.server is not None:
            self.server.should_exit = True
        if self.grpc is not None:
            self.grpc.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.worker is not None:
            self.worker.stop()

    async def run(self, on_started: Callable[[Runner], Awaitable[None]] | None = None) -> None:
        settings = self.app.settings
        try:
            await self.app.open()
        except OPEN_ERRORS as exc:
            log.debug("opening the store failed", exc_info=True)
            raise store_unavailable(settings.database_url, exc) from exc
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        jobs: list[asyncio.Task[None]] = []
        health_job: asyncio.Task[None] | None = None
        try:
            await self._start_metrics()
            if self.components.scheduler:
                publisher = self.app.publisher
                self.scheduler = Scheduler(
                    self.app.store,
                    poll_seconds=settings.poll_seconds,
                    worker_timeout=settings.lease_seconds,
                    reconcile=(
                        None
                        if publisher is None
                        else functools.partial(publisher.reconcile, self.app.store)
                    ),
                    retention=sweeper_for(self.app.store, settings),
                    fire_ahead=settings.schedule_fire_ahead,
                )
                jobs.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
                if self.metrics is not None:
                    self.metrics.leader_probe = self._leading
            if self.components.worker:
                self.pool = self._make_pool()
                pool = self.pool if self.components.pool == "process" else None
                processes = None if pool is None else pool.processes
                concurrency, prefetch = self.components.slots(processes)
                self.worker = Worker(
                    self.app.store,
                    self.executors(),
                    queues=self.components.queues,
                    concurrency=concurrency,
                    pool=self.pool,
                    prefetch=prefetch,
                    worker_id=self.components.worker_id,
                    lease_seconds=settings.lease_seconds,
                    heartbeat_seconds=settings.heartbeat_seconds,
                    blocked_loop_seconds=settings.blocked_loop_seconds,
                    poll_seconds=settings.poll_seconds,
                    autoscale=self.components.autoscale or settings.autoscale_range(),
                    broker=_broker_factory(settings.broker_url),
                )
                if self.components.pool == "process" and self.pool is not None:
                    worker = self.worker
                    self.pool.target = lambda: worker.concurrency  # follows --autoscale
                if self.metrics is not None and self.pool is not None:
                    pool = self.pool
                    self.metrics.child_restarts_probe = lambda: pool.restarts
                jobs.append(
                    asyncio.create_task(
                        self.worker.run(self.components.drain_seconds), name="worker"
                    )
                )
            if self.components.api:
                api = create_api(self.app)
                if self.components.grpc_port is not None:  # first: a busy port stops nothing
                    self.grpc = await self._start_grpc(api, jobs)
                self.server = await _serve(api, settings.host, settings.port, "api", jobs)
            if self.components.health_port is not None:
                self.health_server, health_job = await self._start_health(jobs)
            self.started.set()
            if on_started is not None:
                await on_started(self)
            if self._stop_requested:
                self.stop()
            await _gather_or_fail(jobs, self.stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            await self._stop_health(health_job)
            await self._stop_metrics()
            await self.app.close()

    async def _start_metrics(self) -> None:
        """Count this process's task events when something serves them: the API's
        ``/metrics``, or a metrics server on ``metrics_port``."""
        components = self.components
        if not components.api and components.metrics_port is None:
            return
        # a chronoq process owns its metrics: drop the *_created series prometheus_client adds
        # to every counter and histogram (they double the series for no use in Prometheus)
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.metrics = metrics_for(self.app)
        # store-wide gauges from API and scheduler processes only: N workers would run the
        # same queries N times for the same numbers
        self.metrics.store_gauges = components.api or components.scheduler
        self.metrics.start(self.app.store)
        if components.metrics_port is not None:
            host = components.metrics_host or self.app.settings.host
            metrics_jobs: list[asyncio.Task[None]] = []
            self.metrics_server = await _serve(
                metrics_app(self.metrics), host, components.metrics_port, "metrics", metrics_jobs
            )
            self._metrics_job = metrics_jobs[0]
            port = listening_port(self.metrics_server)
            log.info("serving metrics on http://%s:%d/metrics", host, port)

    async def _start_grpc(self, api: FastAPI, jobs: list[asyncio.Task[None]]) -> GrpcServer:
        """The gRPC API beside ``api``, sharing its key cache and rate limits."""
        from chronoq.api.auth import key_cache
        from chronoq.api.ratelimit import limits_of
        from chronoq.grpc.server import GrpcServer

        server = GrpcServer(
            self.app,
            self.app.settings.host,
            self.components.grpc_port or 0,
            keys=key_cache(api),
            limits=limits_of(api),
        )
        await server.start()
        jobs.append(asyncio.create_task(server.serve(), name="grpc"))
        log.info(
            "serving gRPC (chronoq.v1.Chronoq, health, reflection) on %s",
            server.address,
            extra={"grpc": server.address},
        )
        return server

    async def _start_health(
        self, components_jobs: list[asyncio.Task[None]]
    ) -> tuple[_Server, asyncio.Task[None]]:
        """``/healthz`` (alive: the loop answers, no component ended) and ``/readyz`` (the
        store and configured Redis answer, not stopping) on ``health_port``. It outlives
        the components' stop, so a draining worker stays alive (and not ready)."""
        components, settings = self.components, self.app.settings
        self._readiness = Readiness([settings.broker_url, settings.redis_url])

        def dead() -> list[str]:
            if self._stop_requested:
                return []
            return [job.get_name() for job in components_jobs if job.done()]

        def starting() -> list[str]:
            worker = self.worker
            return ["worker"] if worker is not None and not worker.serving.is_set() else []

        app = health_app(
            lambda: self.app.store,
            self._readiness,
            dead,
            lambda: self._stop_requested,
            starting,
        )
        host = components.health_host or settings.host
        health_jobs: list[asyncio.Task[None]] = []
        server = await _serve(app, host, components.health_port or 0, "health", health_jobs)
        log.info(
            "serving health checks on http://%s:%d/healthz and /readyz",
            host,
            components.health_port or 0,
        )
        return server, health_jobs[0]

    async def _stop_health(self, job: asyncio.Task[None] | None) -> None:
        await _shutdown(self.health_server, job)
        self.health_server = None
        if self._readiness is not None:
            await self._readiness.close()
            self._readiness = None

    def _leading(self) -> bool:
        """Whether this process's scheduler runs and holds the scheduler lease."""
        scheduler = self.scheduler
        return scheduler is not None and scheduler.leading and not self._stop_requested

    async def _stop_metrics(self) -> None:
        await _shutdown(self.metrics_server, self._metrics_job)
        self.metrics_server = self._metrics_job = None
        if self.metrics is not None:
            self.metrics.leader_probe = None
            self.metrics.child_restarts_probe = None
            await self.metrics.stop()


async def _serve(
    asgi: Any, host: str, port: int, name: str, jobs: list[asyncio.Task[None]]
) -> _Server:
    """Start uvicorn serving ``asgi`` as job ``name``; return once it listens. The socket is
    bound here, so a taken port is an :class:`OSError` naming the address (uvicorn would log
    and exit), and ``port`` 0 gets a free one (see :func:`listening_port`)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve {name} on {host}:{port}: {exc.strerror}") from None
    config = uvicorn.Config(
        asgi, host=host, port=port, log_level="warning", access_log=False, log_config=None
    )
    server = _Server(config)
    job = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    jobs.append(job)
    while not server.started and not job.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # uvicorn exposes no "started" event
    if job.done():
        sock.close()
        job.result()  # re-raise a startup error
    return server


def listening_port(server: uvicorn.Server) -> int:
    """The port ``server`` listens on (the one picked for port 0)."""
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


async def _shutdown(server: _Server | None, job: asyncio.Task[None] | None) -> None:
    """Stop a server :func:`_serve` started, waiting at most 5 s for it."""
    if server is not None and job is not None:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(job, 5)


def _broker_factory(url: str | None) -> BrokerFactory | None:
    """Workers use Redis Streams when a broker URL is set, else the store directly."""
    if not url:
        return None
    from chronoq.broker.redis import RedisBroker

    def make(consumer: Consumer) -> Broker:
        return RedisBroker(
            url, consumer.store, consumer.worker_id, consumer.queues, consumer.lease_seconds
        )

    return make


async def _gather_or_fail(jobs: Iterable[asyncio.Task[None]], stop: Callable[[], None]) -> None:
    """Wait for every job; if one crashes, stop the others and re-raise."""
    pending = set(jobs)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for job in done:
            if not job.cancelled() and job.exception() is not None:
                log.error(
                    "%s crashed: %r; stopping",
                    job.get_name(),
                    job.exception(),
                    exc_info=job.exception(),
                )
                stop()
                await asyncio.gather(*pending, return_exceptions=True)
                raise job.exception()  # type: ignore[misc]
