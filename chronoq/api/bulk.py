"""``POST /v1/tasks/retry``, ``POST /v1/tasks/cancel``: act on every task a filter selects
(:mod:`chronoq.store.bulk`), and ``GET /v1/dead-letters``: the dead-letter queue grouped
by error. ``DELETE /v1/tasks`` (:mod:`chronoq.api.retention`) is the bulk discard."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from chronoq.api.auth import Principal, Reader, Writer
from chronoq.api.errors import ApiError, responses
from chronoq.api.service import check_id
from chronoq.api.tasks import AppDep
from chronoq.app import App
from chronoq.durations import parse_instant
from chronoq.models import ID_SCHEMA
from chronoq.states import Status
from chronoq.store import bulk
from chronoq.store.filters import TaskFilter

router = APIRouter(prefix="/v1", tags=["tasks"], responses=responses(401, 403))

Instant = Annotated[
    str | None,
    Field(
        description="ISO 8601 time, or a duration meaning that long ago (1h, 7d)",
        min_length=1,
        max_length=64,
    ),
]


class BulkFilter(BaseModel):
    """Which tasks: all given fields must match. `updated_*` is when a task last changed
    (a dead task: when it died)."""

    queue: str | None = Field(None, max_length=100)
    name: str | None = Field(None, max_length=200)
    error: str | None = Field(
        None, min_length=1, max_length=500, description="the task's last error contains this text"
    )
    created_before: Instant = None
    created_after: Instant = None
    updated_before: Instant = None
    updated_after: Instant = None


class RetryFilter(BulkFilter):
    status: Literal["failed", "dead"] = Field(description="the statuses a retry starts from")


class CancelFilter(BulkFilter):
    status: Literal["scheduled", "queued", "failed", "running"] = Field(
        description="the statuses a cancel starts from"
    )


class BulkRequest(BaseModel):
    dry_run: bool = Field(False, description="count only, change nothing (the confirmation)")
    limit: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="change at most this many "
        "(a client reporting progress calls again with `after`)",
    )
    after: str | None = Field(
        None,
        max_length=64,
        json_schema_extra=ID_SCHEMA,
        description="next_cursor of the previous call: go on after it",
    )


class RetryRequest(BulkRequest):
    filter: RetryFilter


class CancelRequest(BulkRequest):
    filter: CancelFilter


class BulkResult(BaseModel):
    matched: int = Field(description="tasks the filter selected when the request began")
    done: int = Field(description="tasks changed (0 on a dry run)")
    next_cursor: str | None = Field(
        None, description="pass as `after` to go on; null when no selected task is left"
    )


class DeadLetterGroup(BaseModel):
    error: str = Field(description="first line of the error, trimmed (at most 200 chars)")
    name: str
    queue: str
    count: int
    newest: datetime = Field(description="when the latest of them died")


def selection(spec: RetryFilter | CancelFilter, who: Principal, now: float) -> TaskFilter:
    """The store filter ``spec`` means for this caller (a bound key: its namespace only)."""
    bounds: dict[str, float | None] = {}
    for field in ("created_before", "created_after", "updated_before", "updated_after"):
        text = getattr(spec, field)
        try:
            bounds[field] = None if text is None else parse_instant(text, now)
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc), f"filter.{field}") from None
    return TaskFilter(
        Status(spec.status), spec.queue, spec.name, who.namespace, error=spec.error, **bounds
    )


async def _act(
    action: bulk.Action, request: RetryRequest | CancelRequest, app: App, who: Principal
) -> BulkResult:
    now = time.time()
    chosen = selection(request.filter, who, now)
    try:
        bulk.check(action, chosen)
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), "filter.status") from None
    if request.after is not None:
        check_id(request.after, "after")
    matched = await bulk.count(app.store, chosen)
    if request.dry_run or matched == 0:
        return BulkResult(matched=matched, done=0)
    done, cursor = await bulk.apply(app.store, action, chosen, now, request.limit, request.after)
    return BulkResult(matched=matched, done=done, next_cursor=cursor)


@router.post(
    "/tasks/retry",
    response_model=BulkResult,
    responses=responses(422),
    summary="Retry every task a filter selects",
)
async def retry_tasks(request: RetryRequest, app: AppDep, who: Writer) -> BulkResult:
    """Send every failed or dead task matching `filter` back to its queue, 500 per
    transaction, as `POST /v1/tasks/{id}/retry` does one. `dry_run` only counts. A key
    bound to a namespace changes only that namespace's tasks."""
    return await _act(bulk.RETRY_ACTION, request, app, who)


@router.post(
    "/tasks/cancel",
    response_model=BulkResult,
    responses=responses(422),
    summary="Cancel every task a filter selects",
)
async def cancel_tasks(request: CancelRequest, app: AppDep, who: Writer) -> BulkResult:
    """Cancel every scheduled, queued, failed or running task matching `filter`, 500 per
    transaction; running ones are stopped, as by `POST /v1/tasks/{id}/cancel`."""
    return await _act(bulk.CANCEL_ACTION, request, app, who)


@router.get(
    "/dead-letters",
    response_model=list[DeadLetterGroup],
    summary="The dead-letter queue grouped by error",
)
async def dead_letters(
    app: AppDep,
    who: Reader,
    queue: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterGroup]:
    """Dead tasks counted per (first error line, handler, queue), largest group first.
    Retry a group with `POST /v1/tasks/retry` and `{"status": "dead", "name", "queue",
    "error"}` as the filter."""
    groups = await bulk.dead_letters(app.store, who.namespace, queue, limit)
    return [
        DeadLetterGroup(
            error=g.error,
            name=g.name,
            queue=g.queue,
            count=g.count,
            newest=datetime.fromtimestamp(g.newest, UTC),
        )
        for g in groups
    ]
