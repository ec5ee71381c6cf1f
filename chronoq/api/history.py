"""``GET /v1/history``: finished tasks per time bucket, for the dashboard's charts and for
other tools. Counted by the database from the ``tasks_finished`` index
(:mod:`chronoq.store.history`); nothing is kept on the side."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from chronoq.api.auth import Reader
from chronoq.api.errors import ApiError, responses
from chronoq.api.tasks import AppDep
from chronoq.durations import parse_duration, parse_instant
from chronoq.states import Status
from chronoq.store import history

router = APIRouter(prefix="/v1", tags=["history"], responses=responses(401, 403, 422))

#: longest window and most buckets one request may ask for
MAX_WINDOW = 31 * 86400.0
MAX_BUCKETS = 1440
#: bucket sizes an automatic choice picks from (seconds)
NICE_BUCKETS = (10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)

DurationText = Annotated[str, Query(min_length=1, max_length=32)]


class HistorySeries(BaseModel):
    status: Status = Field(description="succeeded, dead or cancelled")
    queue: str | None = Field(None, description="the queue (null: all queues together)")
    counts: list[int] = Field(description="tasks that finished so in each bucket, oldest first")
    total: int


class History(BaseModel):
    start: datetime = Field(description="start of the first bucket")
    end: datetime = Field(description="end of the last bucket (at or after now)")
    bucket_seconds: float
    series: list[HistorySeries]


def _seconds(text: str, field: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), field) from None


def pick_bucket(window: float) -> float:
    """The smallest nice bucket giving at most 120 buckets over ``window`` (the whole
    window when it is shorter than the smallest)."""
    nice = next((b for b in NICE_BUCKETS if window / b <= 120), NICE_BUCKETS[-1])
    return min(nice, window)


def plan(
    window_text: str, bucket_text: str | None, until_text: str | None, now: float
) -> tuple[float, float, int]:
    """(start, bucket, buckets) for the request, buckets aligned to multiples of the bucket
    size so consecutive refreshes count the same buckets; 422 on a bad or too large ask."""
    window = _seconds(window_text, "window")
    if not 1 <= window <= MAX_WINDOW:
        raise ApiError(
            422, "validation_error", "window must be at least 1s and at most 31d", "window"
        )
    bucket = pick_bucket(window) if bucket_text is None else _seconds(bucket_text, "bucket")
    if not 1 <= bucket <= window:
        raise ApiError(
            422, "validation_error", "bucket must be at least 1s and at most the window", "bucket"
        )
    buckets = math.ceil(window / bucket - 1e-9)
    if buckets > MAX_BUCKETS:
        raise ApiError(
            422,
            "validation_error",
            f"{window_text} in buckets of {bucket_text} is {buckets} buckets; at most "
            f"{MAX_BUCKETS} (choose a larger bucket)",
            "bucket",
        )
    until = now
    if until_text is not None:
        try:
            until = parse_instant(until_text, now)
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc), "until") from None
        if not 0 <= until < 1e11:
            raise ApiError(422, "validation_error", "until is out of range", "until")
    end = math.ceil(until / bucket) * bucket
    if end == until:  # the bucket holding `until` is [until, ...): include it
        end += bucket
    return end - bucket * buckets, bucket, buckets


@router.get("/history", response_model=History, summary="Finished tasks per time bucket")
async def get_history(
    app: AppDep,
    who: Reader,
    window: Annotated[
        DurationText, Query(description="how far back: 15m, 1h, 24h, 7d (at most 31d)")
    ] = "1h",
    bucket: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=32,
            description="bucket size (1m, 5m, 1h); default: at most 120 buckets",
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="end of the window (ISO 8601); default now"),
    ] = None,
    queue: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200, description="handler")] = None,
    by: Annotated[
        Literal["total", "queue"],
        Query(description="one series per status, or per status and queue"),
    ] = "total",
) -> History:
    """How many tasks succeeded, died (dead letters) and were cancelled in each bucket of
    the window, by when they finished. A key bound to a namespace counts only its own."""
    start, size, n = plan(window, bucket, until, time.time())
    spec = history.Window(start, size, n, queue, name, who.namespace)
    found = await history.counts(app.store, spec)
    series: dict[tuple[Status, str | None], list[int]] = {}
    if by == "total":
        series = {(s, None): [0] * n for s in history.STATUSES}
    for c in found:
        key = (c.status, c.queue if by == "queue" else None)
        series.setdefault(key, [0] * n)[c.bucket] += c.count
    return History(
        start=datetime.fromtimestamp(start, UTC),
        end=datetime.fromtimestamp(spec.end, UTC),
        bucket_seconds=size,
        series=[
            HistorySeries(status=s, queue=q, counts=counts, total=sum(counts))
            for (s, q), counts in sorted(series.items(), key=lambda i: (i[0][1] or "", i[0][0]))
        ],
    )


class DurationBucket(BaseModel):
    at: datetime = Field(description="start of the bucket")
    count: int = Field(description="tasks that succeeded in it")
    run: list[float] = Field(description="run time of their last attempt (s), per quantile")
    wait: list[float] = Field(description="from due to started, last attempt (s), per quantile")


class Durations(BaseModel):
    start: datetime
    end: datetime
    bucket_seconds: float
    quantiles: list[float]
    buckets: list[DurationBucket] = Field(description="buckets with a task in them, oldest first")


@router.get(
    "/history/durations", response_model=Durations, summary="Run and wait time per time bucket"
)
async def get_durations(
    app: AppDep,
    who: Reader,
    window: Annotated[DurationText, Query(description="as for GET /v1/history")] = "1h",
    bucket: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    until: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    queue: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200, description="handler")] = None,
) -> Durations:
    """Median, 95th and 99th percentile of how long the tasks that succeeded in each bucket
    ran (their last attempt) and waited from due to started. A key bound to a namespace
    sees only its own tasks."""
    start, size, n = plan(window, bucket, until, time.time())
    spec = history.Window(start, size, n, queue, name, who.namespace)
    try:
        found = await history.durations(app.store, spec)
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), "queue") from None
    return Durations(
        start=datetime.fromtimestamp(start, UTC),
        end=datetime.fromtimestamp(spec.end, UTC),
        bucket_seconds=size,
        quantiles=list(history.QUANTILES),
        buckets=[
            DurationBucket(
                at=datetime.fromtimestamp(start + d.bucket * size, UTC),
                count=d.count,
                run=list(d.run),
                wait=list(d.wait),
            )
            for d in found
        ],
    )
