"""Prometheus metrics: task counters and histograms from the event bus, store-wide gauges read
at scrape time, and the API's request latency.

One :class:`Metrics` per :class:`chronoq.App` (:func:`metrics_for`), with its own registry.

- **Counters and histograms** come from this process's event bus: :meth:`Metrics.start`
  subscribes (``local_only``) in a background task and turns each
  :class:`~chronoq.events.TaskEvent` into counts. Only events of *this* process are counted
  (events that arrive from other processes through the Redis bridge are skipped), so summing
  over every scraped process counts each state change once.
- **Gauges** (queue depth, paused queues, workers, busy slots, schedule lag, scheduler lease)
  describe the shared store, not the process: they are read from the store when scraped,
  by processes that run the API or the scheduler (a worker-only process skips them, so N
  workers do not multiply the queries). Aggregate them with ``max`` across instances, not ``sum``.
- ``chronoq_scheduler_leader`` is 1 in a process whose scheduler currently holds the
  scheduler lease (leads), 0 elsewhere.

``/metrics`` is served by the API (:mod:`chronoq.api.metrics`) and, with ``--metrics-port``,
by :func:`metrics_app` (prometheus_client's ASGI exposition) on the process's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from chronoq.events import Subscription, TaskEvent
from chronoq.scheduler import LEASE as SCHEDULER_LEASE
from chronoq.store import limits

if TYPE_CHECKING:
    from chronoq.app import App
    from chronoq.store import Store

log = logging.getLogger("chronoq.metrics")

#: Label value standing in for task names and queues past :attr:`Metrics.max_series`.
OTHER = "_other"

#: Seconds; task handlers run from milliseconds to an hour.
RUN_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: Seconds from due to started: a millisecond when idle, minutes under a backlog.
WAIT_BUCKETS = (0.001, *RUN_BUCKETS)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Snapshot:
    """Store-wide gauges as of ``at`` (``ok`` is False when the store did not answer)."""

    at: float
    ok: bool
    counts: list[tuple[str, str, int]] = field(default_factory=list)
    oldest_queued: list[tuple[str, float]] = field(default_factory=list)
    workers_alive: int = 0
    busy_slots: int = 0
    slots: int = 0
    schedule_lag: float = 0.0
    lease_held: bool = False
    paused: list[tuple[str, bool]] = field(default_factory=list)
    #: (queue, "concurrency" | "rate", tasks waiting on that limit): chronoq.store.limits
    limit_waits: list[tuple[str, str, int]] = field(default_factory=list)


class StoreCollector:
    """Gauges read from the store, plus this process's scheduler flag.

    :meth:`Metrics.refresh` (async) takes a snapshot; :meth:`collect` only renders it, so
    rendering never touches the database from the event loop. Called from another thread
    (a ``prometheus_client`` HTTP server, say) it refreshes a stale snapshot first by
    running the query on the metrics' event loop and waiting for it, with a timeout.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        self.metrics.refresh_from_thread()
        return list(self._families(self.metrics.snapshot))

    def _families(self, snap: Snapshot | None) -> Iterator[Metric]:
        m = self.metrics
        yield GaugeMetricFamily(
            "chronoq_scheduler_leader",
            "1 if this process's scheduler holds the scheduler lease (leads), else 0.",
            value=1 if m.leading() else 0,
        )
        yield CounterMetricFamily(
            "chronoq_metrics_events_dropped",
            "Task events this process's metrics missed because their queue was full.",
            value=m.dropped,
        )
        if m.child_restarts_probe is not None:
            yield CounterMetricFamily(
                "chronoq_worker_child_restarts",
                "Process-pool children this process's worker replaced after they crashed or "
                "were killed for a time or memory limit.",
                value=m.child_restarts_probe(),
            )
        if not m.store_gauges:
            return
        up = GaugeMetricFamily(
            "chronoq_store_up", "1 if the store answered the last scrape's queries."
        )
        if snap is not None:
            up.add_metric([], 1 if snap.ok else 0)
        yield up
        depth = GaugeMetricFamily(
            "chronoq_queue_depth",
            "Tasks in the store by queue and status (status=queued: due and waiting for a worker).",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "chronoq_queue_oldest_queued_age_seconds",
            "Age of the oldest due task no worker has taken yet.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "chronoq_queue_paused",
            "1 if the queue is paused (workers claim none of its tasks), else 0.",
            labels=["queue"],
        )
        alive = GaugeMetricFamily("chronoq_workers_alive", "Workers heartbeating.")
        busy = GaugeMetricFamily(
            "chronoq_worker_busy_slots",
            "Tasks running on live workers (as of their last heartbeat).",
        )
        slots = GaugeMetricFamily("chronoq_worker_slots", "Concurrency of the live workers.")
        lag = GaugeMetricFamily(
            "chronoq_schedule_lag_seconds",
            "How far behind the scheduler is: age of the most overdue scheduled task, retry "
            "or schedule slot not yet made due (0 when none is overdue).",
        )
        held = GaugeMetricFamily(
            "chronoq_scheduler_lease_held",
            "1 if some scheduler holds an unexpired scheduler lease.",
        )
        waits = GaugeMetricFamily(
            "chronoq_tasks_waiting_on_limit",
            "Tasks held back by a limit: queued with every slot of their concurrency key "
            "taken (limit=concurrency), or waiting for their rate limit's turn (limit=rate).",
            labels=["queue", "limit"],
        )
        if snap is not None and snap.ok:
            for queue, kind, n in snap.limit_waits:
                waits.add_metric([queue, kind], n)
            for queue, status, n in snap.counts:
                depth.add_metric([queue, status], n)
            for queue, age in snap.oldest_queued:
                oldest.add_metric([queue], age)
            for queue, is_paused in snap.paused:
                paused.add_metric([queue], 1 if is_paused else 0)
            alive.add_metric([], snap.workers_alive)
            busy.add_metric([], snap.busy_slots)
            slots.add_metric([], snap.slots)
            lag.add_metric([], snap.schedule_lag)
            held.add_metric([], 1 if snap.lease_held else 0)
        yield from (depth, oldest, paused, alive, busy, slots, lag, held, waits)


class Metrics:
    """The metrics of one App in one process; see the module docstring."""

    def __init__(
        self,
        *,
        max_series: int = 1000,
        min_refresh_seconds: float = 1.0,
        store_timeout: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.max_series = max_series
        self.min_refresh_seconds = min_refresh_seconds
        self.store_timeout = store_timeout
        #: whether scrapes read the store-wide gauges (API and scheduler processes)
        self.store_gauges = True
        #: tells whether this process's scheduler leads (set by the runner)
        self.leader_probe: Callable[[], bool] | None = None
        #: the worker's process-pool restart count (set by the runner)
        self.child_restarts_probe: Callable[[], int] | None = None
        self.snapshot: Snapshot | None = None
        self.store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._dropped_before = 0
        self._series: set[tuple[str, str]] = set()
        self._overflow_logged = False

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["queue", "name"], registry=self.registry)

        self.submitted = counter(
            "chronoq_tasks_submitted_total",
            "Tasks ready to run for the first time: submitted to run now, or a delayed or "
            "scheduled task that came due (each task counts once).",
        )
        self.scheduled = counter(
            "chronoq_tasks_scheduled_total",
            "Tasks submitted to run later (delay, run_at, schedule jitter).",
        )
        self.started = counter("chronoq_tasks_started_total", "Attempts started by workers.")
        self.succeeded = counter("chronoq_tasks_succeeded_total", "Attempts that succeeded.")
        self.failed = counter(
            "chronoq_tasks_failed_total",
            "Attempts that failed and will be retried after their backoff.",
        )
        self.dead = counter(
            "chronoq_tasks_dead_total",
            "Tasks whose last attempt failed (into the dead-letter queue).",
        )
        self.retried = counter(
            "chronoq_tasks_retried_total",
            "Tasks queued again: a retry came due, or a manual retry.",
        )
        self.cancelled = counter("chronoq_tasks_cancelled_total", "Tasks cancelled.")
        self.run_duration = Histogram(
            "chronoq_task_run_duration_seconds",
            "Duration of finished attempts (succeeded, failed or dead), claim to report.",
            ["queue", "name"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "chronoq_task_queue_wait_seconds",
            "Time from a task being due to a worker starting it.",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "chronoq_http_request_duration_seconds",
            "API request latency by method, route template and status code.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._by_status: dict[str, Counter] = {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "running": self.started,
        }
        self.collector = StoreCollector(self)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # -- events ------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        current = self._subscription.dropped if self._subscription is not None else 0
        return self._dropped_before + current

    def leading(self) -> bool:
        probe = self.leader_probe
        return probe is not None and probe()

    @property
    def running(self) -> bool:
        return self._consumer is not None and not self._consumer.done()

    def start(self, store: Store) -> None:
        """Count the events of ``store``'s bus from now on (idempotent per store). Needs a
        running event loop."""
        if self.store is store and self.running:
            return
        self._detach()
        self.store = store
        self._loop = asyncio.get_running_loop()
        self._refresh_lock = asyncio.Lock()
        self.snapshot = None
        subscription = store.events.subscribe(maxsize=10_000, local_only=True)
        self._subscription = subscription
        self._consumer = self._loop.create_task(self._consume(subscription), name="chronoq-metrics")

    async def stop(self) -> None:
        consumer = self._consumer
        self._detach()
        if consumer is not None:
            await asyncio.gather(consumer, return_exceptions=True)

    def _detach(self) -> None:
        if self._subscription is not None:
            self._dropped_before += self._subscription.dropped
            self._subscription.close()
            self._subscription = None
        if self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None
        self.store = None

    async def _consume(self, subscription: Subscription) -> None:
        async for batch in subscription:
            try:
                self.observe(batch)
            except Exception:  # never let a bad event stop the counting
                log.exception("could not count task events")

    def _labels(self, queue: str, name: str) -> tuple[str, str]:
        """Bound the number of (queue, name) series: names and queues come from clients."""
        key = (queue, name)
        if key in self._series:
            return key
        if len(self._series) >= self.max_series:
            if not self._overflow_logged:
                self._overflow_logged = True
                log.warning(
                    "more than %d (queue, name) pairs: counting the rest as %r",
                    self.max_series,
                    OTHER,
                )
            key = (OTHER, OTHER)
            if key in self._series:
                return key
        self._series.add(key)
        # Start every counter of a new pair at 0, so rate() and sums see the first increment
        # and failed + dead arithmetic finds both series.
        for counter in (
            self.submitted,
            self.scheduled,
            self.started,
            self.succeeded,
            self.failed,
            self.dead,
            self.retried,
            self.cancelled,
        ):
            counter.labels(*key)
        return key

    def observe(self, events: Iterable[TaskEvent]) -> None:
        """Count task events (see chronoq/store/base.py for which change emits which)."""
        for event in events:
            if event.type != "task":
                continue
            queue, name = self._labels(event.queue, event.name)
            status = event.status
            if status == "queued":
                # attempt 0: first time ready (new task, or a delayed one came due);
                # later attempts: a retry came due or was asked for
                target = self.submitted if event.attempt == 0 else self.retried
                target.labels(queue, name).inc()
            elif status == "scheduled":
                self.scheduled.labels(queue, name).inc()
            elif status in self._by_status:
                self._by_status[status].labels(queue, name).inc()
                if status == "running":
                    if event.wait is not None:
                        self.queue_wait.labels(queue).observe(max(event.wait, 0.0))
                elif event.duration is not None:
                    self.run_duration.labels(queue, name).observe(max(event.duration, 0.0))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_duration.labels(method, route, str(status)).observe(seconds)

    # -- store gauges ------------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> None:
        """Re-read the store-wide gauges, at most once per ``min_refresh_seconds``."""
        store = self.store
        if not self.store_gauges or store is None or self._refresh_lock is None:
            return
        async with self._refresh_lock:
            snap = self.snapshot
            if not force and snap is not None and time.time() - snap.at < self.min_refresh_seconds:
                return
            self.snapshot = await self._read(store)

    async def _read(self, store: Store) -> Snapshot:
        now = time.time()
        try:
            async with asyncio.timeout(self.store_timeout):
                stats = await store.queue_stats(now)
                workers = await store.workers.all()
                due = await store.next_due_at()
                lease = await store.leases.get(SCHEDULER_LEASE)
                limited = await store.limits.queues()
                usage = await store.limits.usage(now, limited) if limited else None
        except Exception as exc:
            log.warning("metrics: store did not answer: %s", exc)
            return Snapshot(now, ok=False)
        return Snapshot(
            at=now,
            ok=True,
            counts=[(q.queue, str(s), n) for q in stats for s, n in q.counts.items()],
            oldest_queued=[
                (q.queue, q.oldest_queued_age_seconds)
                for q in stats
                if q.oldest_queued_age_seconds is not None
            ],
            paused=[(q.queue, q.paused) for q in stats],
            workers_alive=len(workers),
            busy_slots=sum(w.running for w in workers),
            slots=sum(w.concurrency for w in workers),
            schedule_lag=0.0 if due is None else max(now - due, 0.0),
            lease_held=lease is not None and lease.expires_at >= now,
            limit_waits=[
                (queue, kind, n) for (queue, kind), n in sorted(limits.waiting(usage).items())
            ]
            if usage is not None
            else [],
        )

    def refresh_from_thread(self) -> None:
        """From a thread other than the event loop's, refresh a stale snapshot by running
        :meth:`refresh` on the loop (waiting at most ``store_timeout`` + 1 s). On the loop's
        own thread it does nothing: waiting there would deadlock, so async callers refresh
        first (:meth:`scrape`)."""
        loop = self._loop
        if loop is None or not loop.is_running() or not self.store_gauges:
            return
        try:
            if asyncio.get_running_loop() is loop:
                return
        except RuntimeError:
            pass  # no loop in this thread: a foreign thread
        future = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
        try:
            future.result(self.store_timeout + 1)
        except Exception as exc:
            future.cancel()
            log.warning("metrics: could not refresh store gauges: %r", exc)

    # -- exposition --------------------------------------------------------------------------
    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def scrape(self, accept: str | None = None) -> tuple[bytes, str]:
        """Refresh the store gauges, then render: what a ``/metrics`` handler returns."""
        await self.refresh()
        return self.render(accept)


_per_app: weakref.WeakKeyDictionary[App, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(app: App) -> Metrics:
    """The Metrics of ``app`` (created on first use)."""
    metrics = _per_app.get(app)
    if metrics is None:
        metrics = _per_app[app] = Metrics()
    return metrics


def metrics_app(metrics: Metrics) -> Starlette:
    """``GET /metrics`` for a port of its own (``--metrics-port``): prometheus_client's ASGI
    exposition (content negotiation, gzip, ``name[]`` filters) after refreshing the store
    gauges on the event loop; ``/`` and ``/healthz`` answer a line of text, other paths 404
    and other methods 405. The runner serves it with uvicorn, like the API and health ports."""
    exposition = make_asgi_app(metrics.registry)

    class Scrape:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await metrics.refresh()
            await exposition(scope, receive, send)

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("chronoq metrics: see /metrics\n")

    get = ["GET", "HEAD"]
    return Starlette(
        routes=[
            Route("/metrics", Scrape(), methods=get),
            Route("/", hello, methods=get),
            Route("/healthz", hello, methods=get),
        ]
    )


def parse_listen(value: str, default_host: str) -> tuple[str, int]:
    """``9100`` → (default_host, 9100); ``0.0.0.0:9100`` → ("0.0.0.0", 9100)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not a port or host:port")
    return host.strip("[]") or default_host, int(port)
