"""``POST /v1/recurrence/preview``: the next fire times of a cron or interval rule before
it is saved, in UTC and in the rule's time zone, so an editor can show what a schedule
will do. Reads nothing and stores nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from chronoq.api.auth import Reader
from chronoq.api.errors import ApiError, responses
from chronoq.models import ONE_RULE, CronExpression, TimeZoneName
from chronoq.recurrence import Recurrence

router = APIRouter(prefix="/v1", tags=["schedules"], responses=responses(401, 403, 422))


class RulePreview(BaseModel):
    """A rule as ``POST /v1/schedules`` takes it: exactly one of ``cron`` and
    ``interval_seconds``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_RULE)

    cron: CronExpression | None = None
    interval_seconds: float | None = Field(None, ge=1, le=366 * 86400)
    timezone: TimeZoneName = "UTC"
    start_at: AwareDatetime | None = Field(None, description="no slot before this time")
    end_at: AwareDatetime | None = Field(None, description="no slot after this time")
    count: int = Field(10, ge=1, le=100, description="how many fire times")

    @model_validator(mode="after")
    def _one_rule(self) -> RulePreview:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron or interval_seconds")
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        return self


class FireTime(BaseModel):
    at: datetime = Field(description="UTC")
    local: str = Field(description="the same instant in the rule's time zone, ISO 8601")


class Preview(BaseModel):
    timezone: str
    times: list[FireTime] = Field(description="the next fire times, soonest first")


@router.post("/recurrence/preview", response_model=Preview, summary="Preview a schedule's rule")
async def preview(rule: RulePreview, who: Reader) -> Preview:
    """The next `count` fire times of the rule from now (or from `start_at`), as a new
    schedule with it would fire them; an interval counts from `start_at` or now."""
    now = time.time()
    start = rule.start_at.timestamp() if rule.start_at else None
    end = rule.end_at.timestamp() if rule.end_at else None
    recurrence = Recurrence(
        cron=rule.cron,
        interval=rule.interval_seconds,
        timezone=rule.timezone,
        anchor=start if start is not None else now,
    )
    after = max(now, start - 0.001) if start is not None else now
    try:
        times = [
            FireTime(
                at=datetime.fromtimestamp(t, UTC),
                local=datetime.fromtimestamp(t, recurrence.tz).isoformat(),
            )
            for t in recurrence.upcoming(after, rule.count, end)
        ]
    except (ValueError, OverflowError, OSError) as exc:  # past the year 9999
        field = "start_at" if start is not None else "cron" if rule.cron else "interval_seconds"
        raise ApiError(422, "validation_error", f"no fire times: {exc}", field) from None
    return Preview(timezone=rule.timezone, times=times)
