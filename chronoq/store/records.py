"""Rows as Python objects: tasks, attempts, completions, and the JSON codec for storage."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from chronoq import states, tracing
from chronoq.events import TaskEvent
from chronoq.ids import new_id
from chronoq.models import (
    Attempt,
    BackoffSpec,
    Outcome,
    Task,
    TaskTemplate,
    rate_interval,
    to_datetime,
)
from chronoq.states import Status
from chronoq.store import uniqueness

Row = Mapping[str, Any]


class NotFound(LookupError):
    """No task has this id."""


class Conn(Protocol):
    """One connection, as the store's queries use it."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def execute(self, sql: str, *args: Any) -> None: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


@functools.lru_cache(maxsize=256)
def _backoff(text: str) -> BackoffSpec:
    """Decode a stored backoff policy; most tasks share a few, so decoded ones are reused
    (BackoffSpec is frozen)."""
    return BackoffSpec.model_validate_json(text)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def storable_text(text: str) -> str:
    """Text as a database column can hold it, changed visibly where it must be: PostgreSQL
    refuses NUL (written ``\\x00``), and UTF-8 cannot encode a lone surrogate such as the
    ``\\udcff`` that ``surrogateescape`` puts in a file name read from undecodable bytes
    (written as that escape text). A handler's error message or traceback may hold either."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def storable(value: Any) -> Any:
    """``value`` itself when it can be stored as JSON; else a copy whose strings (keys
    included) have their lone surrogates written as ``\\udcxx`` escape text. TypeError
    when JSON cannot hold it at all (an object, an integer beyond 64 bits...). The copy is
    made only when needed: the usual value costs one serialisation."""
    try:
        dumps(value)
        return value
    except TypeError as exc:
        cleaned = _without_surrogates(value)
        try:
            dumps(cleaned)
        except TypeError:
            raise exc from None
        return cleaned


def storable_json(value: Any) -> str:
    """The JSON text of :func:`storable` ``(value)``: what a result or payload column holds."""
    try:
        return dumps(value)
    except TypeError:
        return dumps(storable(value))


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_surrogates(v) for v in value]
    return value


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


class _Task(Protocol):
    """What an event says about a task (a stored one, or one about to be)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def status(self) -> Status: ...
    @property
    def attempts(self) -> int: ...
    @property
    def schedule_id(self) -> str | None: ...
    @property
    def priority(self) -> int: ...
    @property
    def namespace(self) -> str: ...


def status_event(task: _Task, at: float, **extra: Any) -> TaskEvent:
    """``task``'s current status as an event at ``at``."""
    return TaskEvent(
        task.id,
        task.name,
        task.queue,
        task.status.value,
        task.attempts,
        at,
        task.schedule_id,
        priority=task.priority,
        namespace=task.namespace,
        **extra,
    )


def _optional(row: Row, column: str) -> Any:
    """A column a row may lack: one read before its migration, or a partial row."""
    try:
        return row[column]
    except (KeyError, IndexError):
        return None


#: columns later migrations added, which a row read before them (or a partial one) lacks
_LATER = (
    "workflow_id",
    "node",
    "traceparent",
    "unique_key",
    "concurrency_key",
    "concurrency_limit",
    "rate_interval",
)


def _later_columns(row: Row) -> tuple[Any, ...]:
    """The :data:`_LATER` columns of ``row``: read at once when all are there (a whole
    row: the usual case), else one by one."""
    try:
        return (
            row["workflow_id"],
            row["node"],
            row["traceparent"],
            row["unique_key"],
            row["concurrency_key"],
            row["concurrency_limit"],
            row["rate_interval"],
        )
    except (KeyError, IndexError):
        return tuple(_optional(row, column) for column in _LATER)


@dataclass(slots=True)
class TaskRecord:
    """A row of ``tasks``, decoded."""

    id: str
    name: str
    queue: str
    status: Status
    priority: int
    payload: dict[str, Any]
    run_at: float
    created_at: float
    updated_at: float
    attempts: int
    max_attempts: int
    backoff: BackoffSpec
    timeout_seconds: float | None
    idempotency_key: str | None
    worker_id: str | None
    lease_expires_at: float | None
    result: Any
    error: str | None
    schedule_id: str | None = None
    slot: float | None = None
    namespace: str = "default"
    #: the workflow it is a node of (migration 0016), if any, and its node id there
    workflow_id: str | None = None
    node: str | None = None
    #: the W3C trace context of the submission (:mod:`chronoq.tracing`), migration 0019
    traceparent: str | None = None
    unique_key: str | None = None
    #: its concurrency limit's key and limit (migration 0021), if any
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_interval: float | None = None
    #: a claimed workflow node's parents' traceparents (their step spans), for its run
    #: span's links (:func:`chronoq.store.workflows.add_inputs`); not a column
    upstream: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Row) -> TaskRecord:
        (
            workflow_id,
            node,
            traceparent,
            unique_key,
            concurrency_key,
            concurrency_limit,
            rate_interval,
        ) = _later_columns(row)
        return cls(
            id=row["id"],
            name=row["name"],
            queue=row["queue"],
            status=Status(row["status"]),
            priority=row["priority"],
            payload=loads(row["payload"]),
            run_at=row["run_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            backoff=_backoff(row["backoff"]),
            timeout_seconds=row["timeout_seconds"],
            idempotency_key=row["idempotency_key"],
            worker_id=row["worker_id"],
            lease_expires_at=row["lease_expires_at"],
            result=loads(row["result"]),
            error=row["error"],
            schedule_id=row["schedule_id"],
            slot=row["slot"],
            namespace=row["namespace"],
            workflow_id=workflow_id,
            node=node,
            traceparent=traceparent,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            rate_interval=rate_interval,
        )

    @classmethod
    def of_inserted(
        cls,
        task: NewTask,
        status: str | None = None,
        attempts: int | None = None,
        worker_id: str | None = None,
        lease_expires_at: float | None = None,
    ) -> TaskRecord:
        """The record of ``task`` as its INSERT stored it, without reading the row back
        (``RETURNING *`` decoded every column of every new task: a tenth of a submission's
        time): each column the insert sets is ``task``'s, the rest start empty. A hand-off
        inserts it running, with ``status``, ``attempts``, ``worker_id`` and
        ``lease_expires_at`` from the database."""
        return cls(
            id=task.id,
            name=task.name,
            queue=task.queue,
            status=task.status if status is None else Status(status),
            priority=task.priority,
            payload=loads(task.payload),
            run_at=task.run_at,
            created_at=task.created_at,
            updated_at=task.updated_at,
            attempts=task.attempts if attempts is None else attempts,
            max_attempts=task.max_attempts,
            backoff=_backoff(task.backoff),
            timeout_seconds=task.timeout_seconds,
            idempotency_key=task.idempotency_key,
            worker_id=worker_id,
            lease_expires_at=lease_expires_at,
            result=None,
            error=None,
            schedule_id=task.schedule_id,
            slot=task.slot,
            namespace=task.namespace,
            traceparent=task.traceparent,
            unique_key=task.unique_key,
            concurrency_key=task.concurrency_key,
            concurrency_limit=task.concurrency_limit,
            rate_interval=task.rate_interval,
        )

    def event(self, at: float, **extra: Any) -> TaskEvent:
        """This task's current status as an event."""
        return status_event(self, at, **extra)

    def log_fields(self, outcome: str, **more: Any) -> dict[str, Any]:
        """The structured fields of a log line about this task's current attempt."""
        return {
            "task_id": self.id,
            "task_name": self.name,
            "attempt": self.attempts,
            "queue": self.queue,
            "worker": self.worker_id,
            "outcome": outcome,
            **more,
        }

    def to_api(self, history: list[Attempt] | None = None) -> Task:
        return Task(
            id=self.id,
            name=self.name,
            queue=self.queue,
            status=self.status,
            priority=self.priority,
            payload=self.payload,
            run_at=to_datetime(self.run_at),
            created_at=to_datetime(self.created_at),
            updated_at=to_datetime(self.updated_at),
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            timeout_seconds=self.timeout_seconds,
            idempotency_key=self.idempotency_key,
            worker_id=self.worker_id,
            result=self.result,
            error=self.error,
            schedule_id=self.schedule_id,
            slot=to_datetime(self.slot),
            namespace=self.namespace,
            unique_key=self.unique_key,
            concurrency_key=self.concurrency_key,
            concurrency=self.concurrency_limit,
            rate_interval=self.rate_interval,
            workflow_id=self.workflow_id,
            workflow_node=self.node,
            attempt_history=history,
        )


@dataclass(slots=True)
class Completion:
    """The end of one attempt, as a worker (or the lease reaper) reports it."""

    task_id: str
    attempt: int
    outcome: Outcome
    finished_at: float
    status: Status
    next_run_at: float | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    task: TaskRecord | None = None

    @classmethod
    def success(cls, task: TaskRecord, now: float, result: Any) -> Completion:
        return cls(
            task.id, task.attempts, "succeeded", now, Status.SUCCEEDED, result=result, task=task
        )

    def event(self) -> TaskEvent | None:
        """The state change this completion makes, for the event bus."""
        task = self.task
        if task is None:
            return None
        return TaskEvent(
            task.id,
            task.name,
            task.queue,
            self.status.value,
            self.attempt,
            self.finished_at,
            task.schedule_id,
            self.error,
            duration=self.finished_at - task.updated_at,
            priority=task.priority,
            namespace=task.namespace,
        )

    @classmethod
    def failure(
        cls,
        task: TaskRecord,
        now: float,
        outcome: Outcome,
        error: str,
        traceback: str | None = None,
        *,
        retry_now: bool = False,
        retry: bool = True,
    ) -> Completion:
        """A failed attempt: retried after the task's backoff, or ``dead`` when it was the
        last or ``retry`` is false (a failure no later attempt can mend)."""
        status = states.after_failure(task.attempts, task.max_attempts, retry=retry)
        next_run_at = None
        if status is Status.FAILED:
            delay = 0.0 if retry_now else task.backoff.policy().delay(task.attempts)
            next_run_at = now + delay
        return cls(
            task.id,
            task.attempts,
            outcome,
            now,
            status,
            next_run_at,
            None,
            storable_text(error),
            None if traceback is None else storable_text(traceback),
            task,
        )

    @classmethod
    def died(
        cls, task: TaskRecord, now: float, outcome: Outcome, error: str, deaths: int
    ) -> Completion:
        """An attempt whose process died under it (``outcome`` in
        :data:`chronoq.states.DIED`), its task's ``deaths``-th: retried after the backoff
        plus :func:`chronoq.states.after_death`, so the tasks that died together come due
        apart and a repeat victim (a poison task) comes due later, on its own."""
        completion = cls.failure(task, now, outcome, error)
        if completion.next_run_at is not None:
            completion.next_run_at += states.after_death(deaths)
            if deaths >= 2:
                completion.error = storable_text(
                    f"{error}; {deaths} attempts died so far: retried on its own, later"
                )
        return completion

    def refused(self, exc: Exception) -> Completion | None:
        """This attempt as a plain failure, for when the database refused to store it:
        no result or traceback, an error naming the refusal (None without the task)."""
        if self.task is None:
            return None
        why = f"{type(exc).__name__}: {exc}"
        return Completion.failure(
            self.task, self.finished_at, "failed", f"result could not be stored: {why[:1000]}"
        )


def attempt_from_row(row: Row) -> Attempt:
    return Attempt(
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        started_at=to_datetime(row["started_at"]),
        finished_at=to_datetime(row["finished_at"]),
        outcome=row["outcome"],
        result=loads(row["result"]),
        error=row["error"],
        traceback=row["traceback"],
    )


@dataclass(slots=True)
class NewTask:
    """A task about to be inserted: one field per column of :data:`INSERT_TASK`, in order
    (the column list, the placeholders and PostgreSQL's array types derive from these
    fields). ``payload`` and ``backoff`` are already JSON text: encoded once, here. Not
    frozen: a frozen dataclass sets each of its 23 fields through ``object.__setattr__``,
    which made building one 4x slower (2.75 against 0.69 us) on every submission; change
    one with :func:`dataclasses.replace`, never in place."""

    id: str
    name: str
    queue: str
    status: Status
    priority: int
    payload: str
    run_at: float
    created_at: float
    updated_at: float
    attempts: int
    max_attempts: int
    backoff: str
    timeout_seconds: float | None
    idempotency_key: str | None
    schedule_id: str | None
    slot: float | None
    namespace: str
    traceparent: str | None
    unique_key: str | None = None
    unique_until: float | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_interval: float | None = None

    @classmethod
    def of(
        cls,
        template: TaskTemplate,
        run_at: float,
        now: float,
        idempotency_key: str | None = None,
        schedule_id: str | None = None,
        slot: float | None = None,
        namespace: str = "default",
        payload: str | None = None,
        unique_for: float | None = None,
        unique_key: str | None = None,
        debounce: bool = False,
    ) -> NewTask:
        """A new task due at ``run_at``, submitted at ``now``: queued when due, else
        scheduled (:data:`chronoq.lifecycle.SUBMIT`). ``payload``: the template's payload
        as JSON text, when the caller encoded it already (the API, to check its size).
        ``traceparent``: the caller's current trace context, or a new trace per slot.
        ``unique_for``: the task holds ``unique_key`` (default: name + payload) that long;
        ``debounce``: it holds its debounce key until ``run_at``
        (:mod:`chronoq.store.uniqueness`)."""
        traceparent = (
            tracing.current_traceparent()
            if schedule_id is None
            else tracing.slot_traceparent(schedule_id, slot)
        )
        held = None
        if debounce:
            held, unique_for = uniqueness.debounce_key(template.name, unique_key), run_at - now
        elif unique_for is not None:
            held = (
                unique_key
                if unique_key is not None
                else uniqueness.unique_key(template.name, storable(template.payload), None)
            )
        return cls(
            id=new_id(),
            name=template.name,
            queue=template.queue,
            status=Status.QUEUED if run_at <= now else Status.SCHEDULED,
            priority=template.priority,
            payload=storable_json(template.payload) if payload is None else payload,
            run_at=run_at,
            created_at=now,
            updated_at=now,
            attempts=0,
            max_attempts=template.max_attempts,
            backoff=template.backoff.model_dump_json(),
            timeout_seconds=template.timeout_seconds,
            idempotency_key=idempotency_key,
            schedule_id=schedule_id,
            slot=slot,
            namespace=namespace,
            traceparent=traceparent,
            unique_key=held,
            unique_until=None if unique_for is None else now + unique_for,
            **limit_of(template),
        )

    def values(self) -> tuple[Any, ...]:
        """The parameters of :data:`INSERT_TASK`."""
        values: tuple[Any, ...] = _task_values(self)
        return values

    @property
    def idempotency(self) -> tuple[str, str | None]:
        """``(namespace, idempotency_key)``: what makes a submission a repeat (the unique
        index of migration 0011)."""
        return self.namespace, self.idempotency_key

    @property
    def uniqueness(self) -> tuple[str, str | None]:
        """``(namespace, unique_key)``: what makes a submission a duplicate while the
        task holding the key waits or runs (the partial unique index of migration 0018)."""
        return self.namespace, self.unique_key

    def event(self) -> TaskEvent:
        """The event announcing this task once inserted."""
        return status_event(self, self.created_at)


#: what :func:`limit_of` gives a task with no limits (most tasks): no key, limit or rate
_UNLIMITED: dict[str, Any] = {
    "concurrency_key": None,
    "concurrency_limit": None,
    "rate_interval": None,
}


def limit_of(template: TaskTemplate) -> dict[str, Any]:
    """A new task's ``concurrency_key``, ``concurrency_limit`` and ``rate_interval``: the
    template's key (or ``handler:<name>`` when it gives only a limit or a rate), its
    concurrency (1 when it gives a key and neither; none, unlimited, with a rate alone) and
    its rate as seconds between two tasks."""
    key = template.concurrency_key
    if key is None and template.concurrency is None and template.rate is None:
        return _UNLIMITED
    if key is None:
        key = f"handler:{template.name}"
    limit = template.concurrency
    if limit is None and key is not None and template.rate is None:
        limit = 1
    return {
        "concurrency_key": key,
        "concurrency_limit": limit,
        "rate_interval": None if template.rate is None else rate_interval(template.rate),
    }


#: the columns a new task's row sets, in :class:`NewTask`'s field order
TASK_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NewTask))
#: the annotation of each column's field (PostgreSQL's array types derive from them)
TASK_COLUMN_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(NewTask)}
#: the PostgreSQL type of each annotation of :class:`NewTask`
PG_TYPES = {
    "str": "text",
    "str | None": "text",
    "Status": "text",
    "int": "int",
    "int | None": "int",
    "float": "float8",
    "float | None": "float8",
}
_task_values = operator.attrgetter(*TASK_COLUMNS)
#: rows per multi-row INSERT (17 parameters each; both databases allow 32,766)
INSERT_BATCH = 500
INSERT_TASK_COLUMNS = f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)})"
INSERT_TASK = (
    f"{INSERT_TASK_COLUMNS} VALUES ({', '.join(f'${i}' for i in range(1, len(TASK_COLUMNS) + 1))})"
)
