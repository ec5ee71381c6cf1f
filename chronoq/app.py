"""``chronoq.App``: register handlers with ``@app.task`` and submit work from Python."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from chronoq import tracing
from chronoq.config import Settings

if TYPE_CHECKING:
    from chronoq.broker.redis import Publisher
    from chronoq.canvas import Signature
from chronoq.events import EventBus
from chronoq.executors import Executor, PythonExecutor
from chronoq.handles import TaskHandle
from chronoq.models import BackoffSpec, ScheduleCreate, Task, TaskCreate, TaskTemplate
from chronoq.notify import Hub
from chronoq.store import Store, create_store
from chronoq.store.schedules import id_like

log = logging.getLogger("chronoq")

P = ParamSpec("P")
PoolKind = Literal["async", "process"]
R = TypeVar("R")
T = TypeVar("T")


class TaskFunction(Generic[P, R]):
    """A registered handler. Call it to run it here and now; ``delay``/``schedule`` to queue it.

    Payloads are JSON objects, so handlers take keyword arguments; ``delay`` and
    ``schedule`` take the handler's own parameters, so mypy checks a submission like a call.
    They return a :class:`~chronoq.handles.TaskHandle` whose result has the handler's
    return type (for an ``async def`` handler, the awaited type).
    """

    def __init__(
        self,
        app: App,
        name: str,
        fn: Callable[P, R],
        defaults: dict[str, Any],
        pool: PoolKind | None = None,
    ):
        self.app, self.name, self.fn, self.defaults = app, name, fn, defaults
        #: where workers run it: "process", "async", or None for the worker's ``--pool``
        self.pool = pool
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    #: the declaration's ``concurrency_by``: a submission's concurrency key from its payload
    key_from: Callable[[dict[str, Any]], str] | None = None

    def spec(self, payload: dict[str, Any], **options: Any) -> TaskCreate:
        """The submission for ``payload`` with this handler's defaults and ``options``."""
        merged = {**self.defaults, **options}
        if self.key_from is not None and merged.get("concurrency_key") is None and payload:
            merged["concurrency_key"] = self.key_from(payload)
        return TaskCreate(name=self.name, payload=payload, **merged)

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        backoff: BackoffSpec | dict[str, float] | None = None,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
        unique_for: float | None = None,
        unique_key: str | None = None,
        debounce: float | None = None,
        concurrency_key: str | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
    ) -> TaskFunction[P, R]:
        """This handler with other settings for the submissions made through the copy
        returned (the registered handler keeps its own); unset (None) ones are kept.
        ``unique_for``/``unique_key``/``debounce``: unique jobs and debounce;
        ``concurrency_key``/``concurrency``/``rate``: limits (docs/flow-control.md)."""
        given: dict[str, Any] = {
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "timeout_seconds": timeout_seconds,
            "idempotency_key": idempotency_key,
            "unique_for": unique_for,
            "unique_key": unique_key,
            "debounce": debounce,
            "concurrency_key": concurrency_key,
            "concurrency": concurrency,
            "rate": rate,
            "backoff": None if backoff is None else BackoffSpec.model_validate(backoff),
        }
        changed = {k: v for k, v in given.items() if v is not None}
        if run_at is not None or delay_seconds is not None:
            changed.update(run_at=run_at, delay_seconds=delay_seconds)
        configured = copy.copy(self)
        configured.defaults = {**self.defaults, **changed}
        configured.spec({})  # refuse bad options here, not at the first delay()
        return configured

    def s(self, **kwargs: Any) -> Signature:
        """This task with ``kwargs``, as a step of a workflow (:mod:`chronoq.canvas`);
        the step's parents' results are added to them when it runs."""
        from chronoq.canvas import Signature

        return Signature(self, kwargs)

    def _payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise TypeError(
                f"{self.name}: payloads are JSON objects; pass the handler's arguments by keyword"
            )
        return kwargs

    async def _handle(self, spec: TaskCreate) -> TaskHandle[Any]:
        return TaskHandle(self.app, await self.app.submit(spec))

    @overload
    def delay(
        self: TaskFunction[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    @overload
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...
    def delay(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Queue the task to run now (blocking call, for sync code)."""
        return self.app.run_sync(self._handle(self.spec(self._payload(args, kwargs))))

    @overload
    def schedule(
        self: TaskFunction[P, Coroutine[Any, Any, T]],
        at: datetime | float,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def schedule(
        self, at: datetime | float, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[R]: ...
    def schedule(self, at: datetime | float, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Queue the task to run at ``at`` (aware datetime) or after ``at`` seconds."""
        return self.app.run_sync(self._handle(_at(self.spec(self._payload(args, kwargs)), at)))

    @overload
    async def adelay(
        self: TaskFunction[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    @overload
    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...
    async def adelay(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """``delay`` for async code."""
        return await self._handle(self.spec(self._payload(args, kwargs)))

    @overload
    async def aschedule(
        self: TaskFunction[P, Coroutine[Any, Any, T]],
        at: datetime | float,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    async def aschedule(
        self, at: datetime | float, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[R]: ...
    async def aschedule(self, at: datetime | float, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """``schedule`` for async code."""
        return await self._handle(_at(self.spec(self._payload(args, kwargs)), at))

    def delay_many(self, payloads: Iterable[dict[str, Any]]) -> list[Task]:
        """Queue one task per payload, all in one transaction (blocking call)."""
        return self.app.run_sync(self.app.submit_many([self.spec(p) for p in payloads]))

    async def adelay_many(self, payloads: Iterable[dict[str, Any]]) -> list[Task]:
        """``delay_many`` for async code."""
        return await self.app.submit_many([self.spec(p) for p in payloads])


def _at(spec: TaskCreate, at: datetime | float) -> TaskCreate:
    if isinstance(at, datetime):
        return spec.model_copy(update={"run_at": at, "delay_seconds": None})
    return spec.model_copy(update={"delay_seconds": float(at), "run_at": None})


class App:
    """Your handlers plus a connection to the store.

    >>> app = chronoq.App()                      # reads CHRONOQ_DATABASE_URL
    >>> @app.task("send_email", max_attempts=5)
    ... async def send_email(to: str) -> None: ...
    >>> send_email.delay(to="ada@example.com")
    """

    def __init__(self, database_url: str | None = None, *, settings: Settings | None = None):
        settings = settings or Settings()
        if database_url is not None:
            settings = settings.model_copy(update={"database_url": database_url})
        self._settings = settings
        self.tasks: dict[str, TaskFunction[Any, Any]] = {}
        self.schedules: list[ScheduleCreate] = []
        self.hub = Hub()
        self._events: EventBus | None = None  # built with the store when the App opens
        self.publisher: Publisher | None = None
        self._store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._portal: _Portal | None = None

    # -- settings ----------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        """Replace the settings (the CLI does, with its flags, after importing the app).
        The App builds its parts from them when it opens, once; while open they are final."""
        if self.is_open:
            raise RuntimeError("the App's settings are final while it is open: close it first")
        self._settings = settings

    @property
    def events(self) -> EventBus:
        """The open App's event bus, built when it opened, from its settings then."""
        if self._events is None:
            raise RuntimeError("App is not open: use `async with app:` or `await app.open()`")
        return self._events

    # -- handlers ----------------------------------------------------------------------------
    def task(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        timeout: float | None = None,
        backoff: BackoffSpec | dict[str, float] | None = None,
        pool: PoolKind | None = None,
        unique_for: float | None = None,
        concurrency: int | None = None,
        concurrency_by: str | Callable[[dict[str, Any]], str] | None = None,
        rate: str | None = None,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
        """Register a sync or async function as the handler for task ``name``; ``pool``
        ("process" or "async") overrides where workers run it (their ``--pool``);
        ``unique_for``: every submission is a unique job for that many seconds, keyed by
        name + payload (docs/flow-control.md). ``concurrency``: at most that many of its
        tasks run at once across all workers — per handler, or per key with
        ``concurrency_by``: a payload field (the key is ``<field>:<value>``, e.g.
        ``customer_id:42``) or a function of the payload returning the key. ``rate``
        (``"100/s"``, ``"5000/h"``): at most that many of its tasks (of each key, with
        ``concurrency_by``) become due per period; the others wait."""
        if pool not in (None, "async", "process"):
            raise ValueError(f"pool must be 'async' or 'process', not {pool!r}")
        if concurrency_by is not None and concurrency is None and rate is None:
            raise ValueError("concurrency_by needs concurrency or rate (the key's limit)")

        def register(fn: Callable[P, R]) -> TaskFunction[P, R]:
            task_name = name or f"{fn.__module__}.{fn.__name__}"
            defaults: dict[str, Any] = {
                "queue": queue,
                "priority": priority,
                "max_attempts": max_attempts,
                "timeout_seconds": timeout,
            }
            if backoff is not None:
                defaults["backoff"] = BackoffSpec.model_validate(backoff)
            if unique_for is not None:
                defaults["unique_for"] = unique_for
            if concurrency is not None:
                defaults["concurrency"] = concurrency
            if rate is not None:
                defaults["rate"] = rate
            wrapped = TaskFunction(self, task_name, fn, defaults, pool)
            if isinstance(concurrency_by, str):
                wrapped.key_from = _field_key(concurrency_by)
            elif concurrency_by is not None:
                wrapped.key_from = concurrency_by
            self.tasks[task_name] = wrapped
            return wrapped

        return register

    def periodic(
        self,
        *,
        cron: str | None = None,
        interval_seconds: float | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        schedule_name: str | None = None,
        payload: dict[str, Any] | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
        """Register a handler and a schedule that runs it, declared in code.

        The schedule (named ``schedule_name``, default the task name) is created when the
        app opens, or updated if its definition changed; never duplicated. ``options`` are
        schedule fields (``misfire_policy``, ``jitter_seconds``, ``start_at``…) or task
        defaults (``queue``, ``priority``, ``max_attempts``, ``timeout``, ``backoff``).
        """
        task_keys = {"queue", "priority", "max_attempts", "timeout", "backoff", "pool"}
        task_options = {k: v for k, v in options.items() if k in task_keys}
        schedule_options = {k: v for k, v in options.items() if k not in task_keys}

        def register(fn: Callable[P, R]) -> TaskFunction[P, R]:
            wrapped = self.task(name, **task_options)(fn)
            template = TaskTemplate.model_validate(
                wrapped.spec(payload or {}).model_dump(include=set(TaskTemplate.model_fields))
            )
            if id_like(schedule_name or wrapped.name):
                raise ValueError(
                    f"schedule name {schedule_name or wrapped.name!r} is shaped "
                    "like an id (a UUID): give schedule_name another name"
                )
            self.schedules.append(
                ScheduleCreate(
                    name=schedule_name or wrapped.name,
                    cron=cron,
                    interval_seconds=interval_seconds,
                    timezone=timezone,
                    task=template,
                    **schedule_options,
                )
            )
            return wrapped

        return register

    async def sync_schedules(self) -> None:
        """Create or update the schedules declared with :meth:`periodic` (in the
        ``default`` namespace)."""
        for spec in self.schedules:
            _, changed = await self.store.schedules.upsert(spec, time.time())
            if changed:
                log.info(
                    "schedule %s saved (%s)",
                    spec.name,
                    spec.cron or f"every {spec.interval_seconds}s",
                )

    def executors(self) -> dict[str, Executor]:
        """An executor per registered Python handler."""
        return {name: PythonExecutor(t.fn) for name, t in self.tasks.items()}

    # -- store -------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("App is not open: use `async with app:` or `await app.open()`")
        return self._store

    @property
    def is_open(self) -> bool:
        return self._store is not None

    async def open(self) -> None:
        """Connect to the store and apply pending migrations."""
        if self._store is not None:
            return
        settings = self.settings
        events = EventBus(settings.redis_url)
        store = create_store(settings.database_url, self.hub, events)
        await store.open()
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        self._store, self._events = store, events
        self._loop = asyncio.get_running_loop()
        await events.start()
        if settings.broker_url:
            from chronoq.broker import redis as redis_broker

            self.publisher = redis_broker.Publisher(settings.broker_url, events)
            await self.publisher.start()
        await self.sync_schedules()

    async def close(self) -> None:
        if self._store is not None:
            if self.publisher is not None:
                await self.publisher.close()
                self.publisher = None
            await self.events.close()
            await self._store.close()
            self._store = self._events = None
            self._loop = None
        if self._portal is not None:
            self._portal.stop()
            self._portal = None

    async def __aenter__(self) -> App:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(self, spec: TaskCreate) -> Task:
        """Insert a task (idempotently, when it has a key) and wake whoever should run it."""
        record, _ = await self.store.create_task(spec, time.time())
        return record.to_api()

    async def submit_many(self, specs: Sequence[TaskCreate]) -> list[Task]:
        """Insert several tasks in one transaction (all or none)."""
        found = await self.store.create_tasks(specs, time.time())
        return [record.to_api() for record, _ in found]

    # -- tasks by id -------------------------------------------------------------------------
    async def aget(self, task_id: str, *, history: bool = True) -> Task:
        """The task ``task_id`` (with its attempt history unless ``history=False``); raises
        :class:`~chronoq.store.NotFound` when no task has that id."""
        record = await self.store.get_task(task_id)
        return record.to_api(await self.store.get_attempts(task_id) if history else None)

    async def acancel(self, task_id: str) -> Task:
        """Cancel a task that has not finished (a running one is told to stop)."""
        return (await self.store.cancel_task(task_id, time.time())).to_api()

    async def aretry(self, task_id: str) -> Task:
        """Send a failed or dead task back to its queue now."""
        return (await self.store.retry_task(task_id, time.time())).to_api()

    def get(self, task_id: str, *, history: bool = True) -> Task:
        """:meth:`aget` for sync code."""
        return self.run_sync(self.aget(task_id, history=history))

    def cancel(self, task_id: str) -> Task:
        """:meth:`acancel` for sync code."""
        return self.run_sync(self.acancel(task_id))

    def retry(self, task_id: str) -> Task:
        """:meth:`aretry` for sync code."""
        return self.run_sync(self.aretry(task_id))

    # -- sync bridge -------------------------------------------------------------------------
    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this app from sync code: on the app's loop when it is open in
        another thread (e.g. inside a sync handler), else on a private background loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is self._loop:
            coro.close()
            raise RuntimeError("inside async code use `await task.adelay(...)`")
        traceparent = tracing.current_traceparent()  # the caller's, to the loop's thread
        if traceparent is not None:
            coro = tracing.carrying(coro, traceparent)
        if self._loop is not None and self._store is not None:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        if self._portal is None:
            self._portal = _Portal(self)
        return self._portal.call(coro)


class _Portal:
    """A background thread with its own loop and store, for sync callers of a closed App."""

    def __init__(self, app: App) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="chronoq-portal"
        )
        self.thread.start()
        self.app = app
        self.opened = False

    def call(self, coro: Awaitable[T]) -> T:
        async def runner() -> T:
            if not self.opened:
                await self.app.open()
                self.opened = True
            return await coro

        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _field_key(field: str) -> Callable[[dict[str, Any]], str]:
    """``concurrency_by="customer_id"``: the key ``customer_id:<value>`` of a payload."""

    def key(payload: dict[str, Any]) -> str:
        if field not in payload:
            raise ValueError(f"concurrency_by: the payload has no field {field!r}")
        return f"{field}:{payload[field]}"

    return key
