"""Data shapes: what a client submits, what the store keeps, what the API returns."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chronoq.states import Backoff, Status

Outcome = Literal["succeeded", "failed", "timeout", "cancelled", "lost"]


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds (storage form) to an aware UTC datetime (wire form)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


class BackoffSpec(BaseModel):
    """Retry delay after failed attempt n: ``min(base * factor**(n-1), max)`` ± jitter."""

    model_config = ConfigDict(extra="forbid")

    base: float = Field(1.0, ge=0, le=86400, description="seconds before the first retry")
    factor: float = Field(2.0, ge=1, le=100, description="multiplier per further attempt")
    max: float = Field(300.0, ge=0, le=7 * 86400, description="cap on the delay, seconds")
    jitter: float = Field(0.1, ge=0, le=1, description="random spread, fraction of the delay")

    def policy(self) -> Backoff:
        return Backoff(self.base, self.factor, self.max, self.jitter)


class TaskCreate(BaseModel):
    """A request to run a task once: now, at ``run_at``, or after ``delay_seconds``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$",
                      description="handler name, e.g. `send_email` or `chronoq.http`")
    payload: dict[str, Any] = Field(default_factory=dict,
                                    description="JSON object passed to the handler")
    queue: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first within a queue")
    run_at: datetime | None = Field(None, description="ISO 8601 time with a UTC offset")
    delay_seconds: float | None = Field(None, ge=0, le=10 * 365 * 86400)
    max_attempts: int = Field(3, ge=1, le=100)
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)

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
        return self

    def due_at(self, now: float) -> float:
        """When the task becomes due, as epoch seconds."""
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

    id: str
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
    worker_id: str | None = None
    result: Any = None
    error: str | None = None
    attempt_history: list[Attempt] | None = Field(
        None, description="every attempt, oldest first (only on GET /v1/tasks/{id})")


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")


class QueueStats(BaseModel):
    queue: str
    counts: dict[Status, int]
    depth: int = Field(description="tasks due and waiting for a worker (status queued)")
    oldest_queued_age_seconds: float | None = None


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
