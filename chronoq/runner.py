"""Run chronoq components — API, scheduler, workers — in one process until a signal.

``chronoq dev`` runs all three on one open store (in-process wake-ups, no polling);
``chronoq api|scheduler|worker`` run one each, for distributed deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field

import prometheus_client
import uvicorn

from chronoq.api import create_api
from chronoq.app import App
from chronoq.broker import Broker
from chronoq.executors import Executor
from chronoq.metrics import Metrics, MetricsServer, metrics_for
from chronoq.pool import PoolExecutor, ProcessPool, child_command
from chronoq.scheduler import Scheduler
from chronoq.worker import Worker, builtin_executors

log = logging.getLogger("chronoq")

#: a process-pool worker claims this many tasks per child ahead (Celery's default too): the
#: next task is at hand when a child finishes, without a claim round trip in between
PREFETCH_PER_PROCESS = 4


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
    #: hostnames and CIDRs whose non-public addresses chronoq.http may call
    http_allow: list[str] = field(default_factory=list)
    worker_id: str | None = None
    drain_seconds: float = 30.0
    #: serve Prometheus /metrics on this port (the API serves it on its own port anyway)
    metrics_port: int | None = None
    #: address for ``metrics_port`` (default: the settings' host)
    metrics_host: str | None = None
    autoscale: tuple[int, int] | None = None
    #: where Python handlers run: "async" (the worker process) or "process" (children)
    pool: str = "async"
    #: children of the process pool (default: the CPU count)
    processes: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    #: tasks a process-pool worker claims beyond its children (default 4 per child)
    prefetch: int | None = None
    #: the demo handlers are registered (children register them too)
    demo: bool = False


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
        self.metrics_server: MetricsServer | None = None
        self.started = asyncio.Event()
        self._stop_requested = False

    def executors(self) -> dict[str, Executor]:
        """Built-in executors, then the app's handlers: in the process pool when they run
        there (``--pool process`` or ``@app.task(pool="process")``)."""
        executors = {**builtin_executors(self.components.shell_allow,
                                         self.components.http_allow),
                     **self.app.executors()}
        if self.pool is not None:
            in_pool = PoolExecutor(self.pool)
            executors.update(dict.fromkeys(self.process_handlers(), in_pool))
        return executors

    def process_handlers(self) -> list[str]:
        """The app's handlers that run in child processes."""
        return [name for name, fn in self.app.tasks.items()
                if (fn.pool or self.components.pool) == "process"]

    def _make_pool(self) -> ProcessPool | None:
        c = self.components
        if c.pool != "process" and not self.process_handlers():
            return None
        processes = c.processes or os.cpu_count() or 1
        return ProcessPool(child_command(self.app.settings.app, demo=c.demo), processes,
                           max_tasks_per_child=c.max_tasks_per_child,
                           max_memory_mib=c.max_memory_per_child)

    def stop(self) -> None:
        if self._stop_requested and self.server is not None:
            self.server.force_exit = True
        if self._stop_requested and self.worker is not None:
            log.warning("second stop signal: ending running tasks now; they will be retried")
            self.worker.stop_now()
        self._stop_requested = True
        if self.server is not None:
            self.server.should_exit = True
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.worker is not None:
            self.worker.stop()

    async def run(self, on_started: Callable[[Runner], Awaitable[None]] | None = None) -> None:
        settings = self.app.settings
        await self.app.open()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        jobs: list[asyncio.Task[None]] = []
        try:
            await self._start_metrics()
            if self.components.scheduler:
                publisher = self.app.publisher
                self.scheduler = Scheduler(
                    self.app.store, poll_seconds=settings.poll_seconds,
                    worker_timeout=settings.lease_seconds,
                    reconcile=publisher.reconcile if publisher is not None else None)
                jobs.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
                if self.metrics is not None:
                    self.metrics.leader_probe = self._leading
            if self.components.worker:
                self.pool = self._make_pool()
                concurrency, prefetch = self.components.concurrency, 0
                if self.components.pool == "process" and self.pool is not None:
                    concurrency = self.pool.processes  # one task per child
                    wanted = self.components.prefetch
                    prefetch = PREFETCH_PER_PROCESS * concurrency if wanted is None else wanted
                self.worker = Worker(
                    self.app.store, self.executors(), queues=self.components.queues,
                    concurrency=concurrency, pool=self.pool, prefetch=prefetch,
                    worker_id=self.components.worker_id,
                    lease_seconds=settings.lease_seconds,
                    heartbeat_seconds=settings.heartbeat_seconds,
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
                jobs.append(asyncio.create_task(
                    self.worker.run(self.components.drain_seconds), name="worker"))
            if self.components.api:
                config = uvicorn.Config(create_api(self.app), host=settings.host,
                                        port=settings.port, log_level="warning",
                                        access_log=False, log_config=None)
                self.server = _Server(config)
                jobs.append(asyncio.create_task(self.server.serve(), name="api"))
                while not self.server.started and not jobs[-1].done():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # uvicorn exposes no "started" event
                if jobs[-1].done():
                    jobs[-1].result()  # re-raise a bind error
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
            self.metrics_server = MetricsServer(self.metrics, host, components.metrics_port)
            await self.metrics_server.start()

    def _leading(self) -> bool:
        """Whether this process's scheduler runs and holds the scheduler lease."""
        scheduler = self.scheduler
        return scheduler is not None and scheduler.leading and not self._stop_requested

    async def _stop_metrics(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None
        if self.metrics is not None:
            self.metrics.leader_probe = None
            self.metrics.child_restarts_probe = None
            await self.metrics.stop()


def _broker_factory(url: str | None) -> Callable[[Worker], Broker] | None:
    """Workers use Redis Streams when a broker URL is set, else the store directly."""
    if not url:
        return None
    from chronoq.broker.redis import RedisBroker

    def make(worker: Worker) -> Broker:
        return RedisBroker(url, worker.store, worker.id, worker.queues, worker.lease_seconds)

    return make


async def _gather_or_fail(jobs: Iterable[asyncio.Task[None]], stop: Callable[[], None]) -> None:
    """Wait for every job; if one crashes, stop the others and re-raise."""
    pending = set(jobs)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for job in done:
            if not job.cancelled() and job.exception() is not None:
                log.error("%s crashed: %r; stopping", job.get_name(), job.exception())
                stop()
                await asyncio.gather(*pending, return_exceptions=True)
                raise job.exception()  # type: ignore[misc]
