"""Data shapes: what a client submits, what the store keeps, what the API returns."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from chronoq.recurrence import check_cron, check_timezone
from chronoq.states import Backoff, Status

if TYPE_CHECKING:  # defined by chronoq.dag, which sets it here (it imports this module)
    from chronoq.dag import WorkflowCreate

Outcome = Literal["succeeded", "failed", "timeout", "cancelled", "lost", "crashed"]

#: task and schedule ids as the OpenAPI document declares them: lower-case UUIDs
ID_SCHEMA: dict[str, Any] = {
    "format": "uuid",
    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
}
Id = Annotated[str, Field(json_schema_extra=ID_SCHEMA)]
#: a caller's key (idempotency_key, unique_key): any text without NUL characters
KeyText = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


def not_both(first: str, first_type: str, second: str, second_type: str) -> dict[str, Any]:
    """JSON Schema for "``first`` and ``second`` are not both given (non-null)", so
    clients and fuzzers know what the model validator refuses."""
    return {
        "not": {
            "required": [first, second],
            "properties": {first: {"type": first_type}, second: {"type": second_type}},
        }
    }


#: The OpenAPI component ``JsonValue``: any JSON value a payload can hold. Integers are
#: bounded because stored JSON holds 64 bits (larger ones are a 422); the API's OpenAPI
#: document adds it under ``components.schemas`` (see :func:`chronoq.api.create_api`).
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string"},
        {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ]
}
#: a payload: validated as any JSON object (the API checks what it can store), documented
#: as an object of :data:`JSON_VALUE_SCHEMA` values in requests only (a stored float such
#: as 1e300 is integral, so JSON Schema would count it an integer out of range)
Payload = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
        mode="validation",
    ),
]

#: JSON Schema for "exactly one of cron and interval_seconds is given (non-null)"
ONE_RULE: dict[str, Any] = {
    "oneOf": [
        {"required": ["cron"], "properties": {"cron": {"type": "string"}}},
        {"required": ["interval_seconds"], "properties": {"interval_seconds": {"type": "number"}}},
    ]
}


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds (storage form) to an aware UTC datetime (wire form)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


class BackoffSpec(BaseModel):
    """Retry delay after failed attempt n: ``min(base * factor**(n-1), max)`` ± jitter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: float = Field(1.0, ge=0, le=86400, description="seconds before the first retry")
    factor: float = Field(2.0, ge=1, le=100, description="multiplier per further attempt")
    max: float = Field(300.0, ge=0, le=7 * 86400, description="cap on the delay, seconds")
    jitter: float = Field(0.1, ge=0, le=1, description="random spread, fraction of the delay")

    def policy(self) -> Backoff:
        return Backoff(self.base, self.factor, self.max, self.jitter)


def rate_interval(text: str) -> float:
    """Seconds between two tasks under a rate such as ``"100/s"`` or ``"5000/h"``."""
    count, _, unit = text.partition("/")
    return {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[unit] / float(count)


#: a rate: a whole count from 1 per second, minute, hour or day (``"100/s"``, ``"5000/h"``)
RateText = Annotated[str, Field(max_length=16, pattern=r"^[1-9][0-9]{0,8}/[smhd]$")]


class TaskTemplate(BaseModel):
    """What to run: the part of a task that a recurring schedule repeats."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        ...,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="handler name, e.g. `send_email` or `chronoq.http`",
    )
    payload: Payload = Field(default_factory=dict, description="JSON object passed to the handler")
    queue: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first within a queue")
    max_attempts: int = Field(3, ge=1, le=100)
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    concurrency_key: KeyText | None = Field(
        None,
        examples=["customer:42"],
        description="at most `concurrency` tasks with this key run at once, across every "
        "queue and worker (docs/flow-control.md); default `handler:<name>` when only "
        "concurrency is given",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="how many tasks of its concurrency_key may run at once (default 1 "
        "when a key is given without a rate)",
    )
    rate: RateText | None = Field(
        None,
        examples=["100/s", "5000/h"],
        description="at most this many tasks of its concurrency_key become due per second "
        "(s), minute (m), hour (h) or day (d), across all workers; the others wait",
    )


#: what debounce, which sets the run time itself, is not given with
_TIMED = (("unique_for", "number"), ("run_at", "string"), ("delay_seconds", "number"))
#: JSON Schema: a unique_key is refused without unique_for or debounce
_KEY_NEEDS_WINDOW: dict[str, Any] = {
    "not": {
        "required": ["unique_key"],
        "properties": {
            "unique_key": {"type": "string"},
            "unique_for": {"not": {"type": "number"}},
            "debounce": {"not": {"type": "number"}},
        },
    }
}
#: JSON Schema: keys starting ``debounce:`` are debounce's own
_DEBOUNCE_PREFIX_RESERVED: dict[str, Any] = {
    "not": {
        "required": ["unique_key"],
        "properties": {
            "unique_key": {"type": "string", "pattern": "^debounce:"},
            "debounce": {"not": {"type": "number"}},
        },
    }
}


class TaskCreate(TaskTemplate):
    """A request to run a task once: now, at ``run_at``, or after ``delay_seconds``."""

    model_config = ConfigDict(
        json_schema_extra={
            **not_both("run_at", "string", "delay_seconds", "number"),
            "allOf": [
                *(not_both("debounce", "number", other, kind) for other, kind in _TIMED),
                _KEY_NEEDS_WINDOW,
                _DEBOUNCE_PREFIX_RESERVED,
            ],
        }
    )

    run_at: datetime | None = Field(None, description="ISO 8601 time with a UTC offset")
    delay_seconds: float | None = Field(None, ge=0, le=10 * 365 * 86400)
    idempotency_key: KeyText | None = Field(None, description="any text without NUL characters")
    unique_for: float | None = Field(
        None,
        gt=0,
        le=30 * 86400,
        description="seconds during which an equal submission, while this task waits or "
        "runs, returns this task instead of a new one (docs/flow-control.md)",
    )
    unique_key: KeyText | None = Field(
        None,
        description="what makes submissions equal for unique_for (default: name + payload) "
        "or debounce (default: name)",
    )
    debounce: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="run this many seconds after the last equal submission: one made "
        "meanwhile replaces this task's payload and pushes its run time back",
    )

    @field_validator("run_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("run_at needs a timezone offset, e.g. 2030-01-01T09:00:00Z")
        return value

    @field_validator("delay_seconds")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("delay_seconds must be a finite number")
        return value

    @model_validator(mode="after")
    def _one_time(self) -> TaskCreate:
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("give run_at or delay_seconds, not both")
        if self.unique_key is not None and self.unique_for is None and self.debounce is None:
            raise ValueError("unique_key needs unique_for or debounce (the window, in seconds)")
        if self.debounce is not None and any(getattr(self, f) is not None for f, _ in _TIMED):
            raise ValueError("debounce sets the run time: give no unique_for, run_at or delay")
        if self.debounce is None and (self.unique_key or "").startswith("debounce:"):
            raise ValueError("unique_key may not start with 'debounce:' (debounce's keys do)")
        return self

    def due_at(self, now: float) -> float:
        """When the task becomes due, as epoch seconds."""
        if self.debounce is not None:
            return now + self.debounce
        if self.run_at is not None:
            return self.run_at.timestamp()
        return now + (self.delay_seconds or 0.0)


class Attempt(BaseModel):
    """One execution of a task by a worker."""

    attempt: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: Outcome | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None


class Task(BaseModel):
    """A task as the API returns it."""

    id: Id
    name: str
    queue: str
    status: Status
    priority: int
    payload: dict[str, Any]
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    attempts: int = Field(description="attempts started so far")
    max_attempts: int
    backoff: BackoffSpec
    timeout_seconds: float | None
    idempotency_key: str | None
    unique_key: str | None = Field(None, description="the key this task holds (unique_for)")
    concurrency_key: str | None = Field(None, description="its concurrency limit's key")
    concurrency: int | None = Field(None, description="the limit of its concurrency_key")
    rate_interval: float | None = Field(
        None, description="its rate limit, as seconds between two tasks of its key"
    )
    worker_id: str | None = None
    result: Any = None
    error: str | None = None
    namespace: str = Field("default", description="the namespace of the key that made it")
    schedule_id: Id | None = Field(None, description="the schedule that fired this task")
    slot: datetime | None = Field(None, description="the schedule's nominal fire time")
    workflow_id: Id | None = Field(None, description="the workflow this task is a step of")
    workflow_node: str | None = Field(None, description="its node id in that workflow")
    attempt_history: list[Attempt] | None = Field(
        None, description="every attempt, oldest first (only on GET /v1/tasks/{id})"
    )
    warnings: list[str] | None = Field(
        None,
        description="why the task may never run, e.g. no live worker of its queue "
        "has its handler (on submission, and on GET /v1/tasks/{id} while it waits)",
    )


class TaskBatch(BaseModel):
    """Several tasks submitted at once: one request, one transaction."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskCreate] = Field(
        ..., min_length=1, max_length=1000, description="1 to 1,000 tasks"
    )


class TaskBatchResult(BaseModel):
    items: list[Task] = Field(description="the tasks, in the order submitted")
    created: list[bool] = Field(
        description="per task: false when its idempotency_key (or unique_key) returned a "
        "task submitted earlier"
    )


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: Id | None = Field(None, description="pass as `cursor` for the next page")


class KeyUsage(BaseModel):
    """One concurrency key's tasks in a queue."""

    key: str
    running: int = Field(description="tasks of the key running (in any queue: its slots)")
    queued: int = Field(description="tasks of the key queued in this queue")
    limit: int | None = Field(description="how many may run at once (null: only a rate)")
    full: bool = Field(description="no free slot: its queued tasks wait on the limit")


class RateState(BaseModel):
    """A rate-limited key's bucket (GCRA: the time of its next free turn)."""

    key: str
    per_second: float
    next_turn_at: datetime = Field(description="the earliest a new task of the key can run")
    waiting: int = Field(description="tasks of the key in this queue waiting for their turn")


class QueueLimits(BaseModel):
    """Flow control in a queue (docs/flow-control.md)."""

    waiting_on_concurrency: int = Field(description="queued tasks whose key has no free slot")
    waiting_on_rate: int = Field(description="tasks waiting for their rate limit's turn")
    keys_total: int = Field(description="keys with running or queued tasks in the queue")
    keys: list[KeyUsage] = Field(description="the busiest keys, at most 20")
    rates: list[RateState] = []


class QueueStats(BaseModel):
    queue: str
    counts: dict[Status, int]
    depth: int = Field(description="tasks due and waiting for a worker (status queued)")
    oldest_queued_age_seconds: float | None = None
    paused: bool = Field(
        False,
        description="paused: workers claim none of its tasks, which "
        "stay queued until it is resumed",
    )
    paused_at: datetime | None = None
    paused_by: str | None = Field(
        None, description="id of the API key that paused it (none when authentication is off)"
    )
    limits: QueueLimits | None = Field(
        None, description="concurrency keys and rate limits, for queues that have keyed tasks"
    )


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


MisfirePolicy = Literal["skip", "run_once", "catch_up"]
#: what a slot does while the schedule's previous run still waits or runs (Temporal's)
OverlapPolicy = Literal["allow", "skip", "buffer_one", "cancel_running"]


def _valid_cron(value: str) -> str:
    check_cron(value)
    return value


def _valid_timezone(value: str) -> str:
    check_timezone(value)
    return value


CronExpression = Annotated[str, Field(max_length=200), AfterValidator(_valid_cron)]
TimeZoneName = Annotated[str, Field(max_length=64), AfterValidator(_valid_timezone)]


#: a schedule fires a task or starts a workflow: one of the two
ONE_TARGET: dict[str, Any] = {
    "anyOf": [
        {"required": ["task"], "properties": {"task": {"type": "object"}}},
        {"required": ["workflow"], "properties": {"workflow": {"type": "object"}}},
    ],
    **not_both("task", "object", "workflow", "object"),
}


class ScheduleFields(BaseModel):
    """The fields a schedule can be created with; PATCH accepts any subset."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={**ONE_RULE, **ONE_TARGET})

    cron: CronExpression | None = Field(
        None,
        examples=["*/5 * * * *"],
        description="5 fields, 6 with leading seconds, or @hourly/@daily…",
    )
    interval_seconds: float | None = Field(
        None, ge=1, le=366 * 86400, description="fire every N seconds instead of cron"
    )
    timezone: TimeZoneName = Field("UTC", description="IANA zone the cron is read in")
    task: TaskTemplate | None = Field(None, description="the task each slot fires")
    workflow: WorkflowCreate | None = Field(
        None,
        description="instead of a task, the workflow each slot starts (the body of "
        "POST /v1/workflows)",
    )
    start_at: AwareDatetime | None = Field(None, description="no slot before this time")
    end_at: AwareDatetime | None = Field(None, description="no slot after this time")
    misfire_policy: MisfirePolicy = Field(
        "run_once",
        description="slots missed while down or late: skip them, run the latest "
        "once, or catch_up on up to max_catch_up",
    )
    max_catch_up: int = Field(10, ge=1, le=1000)
    misfire_grace_seconds: float = Field(
        60.0, ge=0, le=86400, description="a slot later than this is missed"
    )
    jitter_seconds: float = Field(
        0.0, ge=0, le=86400, description="delay each run by a random 0..jitter seconds"
    )
    overlap_policy: OverlapPolicy = Field(
        "allow",
        description="a slot while the previous run still waits or runs: allow it, skip it, "
        "buffer_one (run it once the previous run ended; at most one waits), or "
        "cancel_running (cancel the previous run, then fire)",
    )
    paused: bool = False

    @model_validator(mode="after")
    def _valid_rule(self) -> ScheduleFields:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron or interval_seconds")
        if (self.task is None) == (self.workflow is None):
            raise ValueError("give exactly one of task or workflow")
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        return self


class ScheduleCreate(ScheduleFields):
    """A recurring schedule: fire ``task`` on a cron or interval rule."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="unique in its namespace and not shaped like an id "
        "(a UUID), e.g. `nightly-report`",
    )


#: PATCH fields a schedule cannot be without: null is refused (leave one out to keep it)
KEPT_UNLESS_GIVEN = (
    "cron",
    "interval_seconds",
    "timezone",
    "task",
    "workflow",
    "misfire_policy",
    "max_catch_up",
    "misfire_grace_seconds",
    "jitter_seconds",
    "overlap_policy",
    "paused",
)


def _patch_schema(schema: dict[str, Any]) -> None:
    """Document what ScheduleUpdate refuses: not both rules, no null where one is kept."""
    schema.update(not_both("cron", "string", "interval_seconds", "number"))
    schema["allOf"] = [not_both("task", "object", "workflow", "object")]
    for name in KEPT_UNLESS_GIVEN:
        prop = schema["properties"][name]
        kinds = [k for k in prop.pop("anyOf", []) if k != {"type": "null"}]
        prop.pop("default", None)
        if len(kinds) == 1:
            prop.update(kinds[0])
        elif kinds:
            prop["anyOf"] = kinds


class ScheduleUpdate(BaseModel):
    """A partial update (PATCH): only the fields given change. Switching rules takes just
    the new one (``cron`` clears ``interval_seconds`` and the other way round)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_patch_schema)

    cron: CronExpression | None = None
    interval_seconds: float | None = Field(None, ge=1, le=366 * 86400)
    timezone: TimeZoneName | None = None
    task: TaskTemplate | None = None
    workflow: WorkflowCreate | None = None
    start_at: AwareDatetime | None = None
    end_at: AwareDatetime | None = None
    misfire_policy: MisfirePolicy | None = None
    max_catch_up: int | None = Field(None, ge=1, le=1000)
    misfire_grace_seconds: float | None = Field(None, ge=0, le=86400)
    jitter_seconds: float | None = Field(None, ge=0, le=86400)
    overlap_policy: OverlapPolicy | None = None
    paused: bool | None = None

    @field_validator(*KEPT_UNLESS_GIVEN, mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise ValueError(f"cannot be null: leave {info.field_name} out to keep it")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleUpdate:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        if self.task is not None and self.workflow is not None:
            raise ValueError("give task or workflow, not both")
        return self


class Schedule(ScheduleCreate):
    """A schedule as the API returns it."""

    model_config = ConfigDict(extra="ignore")

    id: Id
    namespace: str = "default"
    next_fire_at: datetime | None = Field(description="next slot; null when paused or ended")
    last_fire_at: datetime | None
    buffered_slot: datetime | None = Field(
        None, description="buffer_one: the slot waiting for the previous run to end"
    )
    next_fire_times: list[datetime] = Field(description="the next 5 slots")
    created_at: datetime
    updated_at: datetime


class SchedulePage(BaseModel):
    items: list[Schedule]
    next_cursor: str | None = None


class WorkerChild(BaseModel):
    """A process-pool child of a worker, as the worker last reported it."""

    slot: int
    pid: int
    state: str = Field(description="starting, idle, busy, retiring, killing")
    task_id: str | None = None
    tasks: int = Field(0, description="tasks it ran")
    rss_mib: float | None = None


class WorkerInfo(BaseModel):
    """A worker process as it last reported itself."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    status: Literal["alive", "stopped", "dead"]
    running: int = Field(description="tasks running at the last heartbeat")
    processed: int = Field(description="attempts finished since start")
    started_at: datetime
    last_seen_at: datetime
    handlers: list[str] | None = Field(
        None, description="the task names it can run (null: a worker too old to say)"
    )
    child_restarts: int = Field(
        0, description="process-pool children replaced after crashing or being killed for a limit"
    )
    control: Literal["drain", "stop"] | None = Field(
        None,
        description="what the API asked of it (POST /v1/workers/{id}/drain or /stop); it "
        "acts on it at its next heartbeat",
    )
    stopping: bool = Field(
        False, description="it stopped claiming (acted on a drain or stop, or shutting down)"
    )
    tasks: list[str] = Field(
        default_factory=list, description="ids of the tasks it ran at its last heartbeat"
    )
    children: list[WorkerChild] = Field(
        default_factory=list, description="its process-pool children (--pool process)"
    )


import chronoq.dag  # noqa: E402, F401  defines WorkflowCreate and rebuilds the schedule models
