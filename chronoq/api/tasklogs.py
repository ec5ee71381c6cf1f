"""``GET /v1/tasks/{id}/logs``: what a task's handler logged and printed, per attempt, and
its latest progress (:mod:`chronoq.logcapture`, :mod:`chronoq.store.tasklogs`).

The worker writes captured lines about twice a second while an attempt runs and sends
each chunk it wrote as a ``log`` event (``/v1/events?types=log``), so a client follows a
running task on the event socket and asks here, with ``after`` set to the ``cursor`` of
the last chunk it has (``<attempt>.<seq>``), only for what it missed: the lines before it
connected, or a ``seq`` skipped (the dashboard's task view does so). The task is looked up the
way ``GET /v1/tasks/{id}`` does it: a key bound to another namespace gets 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from chronoq.api import service
from chronoq.api.auth import Reader
from chronoq.api.errors import responses
from chronoq.api.tasks import AppDep, TaskId
from chronoq.store import tasklogs

router = APIRouter(prefix="/v1", tags=["tasks"], responses=responses(401, 403))


class LogLine(BaseModel):
    at: datetime
    stream: str = Field(description="log (a logging record), stdout, stderr, or truncated")
    text: str


class AttemptLog(BaseModel):
    attempt: int
    lines: list[LogLine]
    truncated: bool = Field(
        description="the attempt logged more than the worker keeps (64 KiB): the rest is gone"
    )


class Progress(BaseModel):
    attempt: int
    progress: float = Field(ge=0, le=1)
    message: str | None = None
    at: datetime


class TaskLogs(BaseModel):
    task_id: str
    status: str = Field(description="the task's status now: follow while it is running")
    progress: Progress | None = Field(None, description="the latest progress it reported")
    attempts: list[AttemptLog] = Field(description="attempts with lines after the cursor")
    cursor: str = Field(description="pass as `after` to get only the lines written since")


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@router.get(
    "/tasks/{task_id}/logs",
    response_model=TaskLogs,
    responses=responses(404, 422),
    summary="A task's captured log lines and progress",
)
async def task_logs(
    task_id: TaskId,
    app: AppDep,
    who: Reader,
    attempt: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="only this attempt")
    ] = None,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^\d{1,9}\.\d{1,9}$",
            description="the `cursor` of an earlier answer: newer lines only",
        ),
    ] = None,
) -> TaskLogs:
    """Lines each attempt's handler logged (stdlib `logging`, at the worker's log level)
    or printed, oldest first, at most 64 KiB per attempt; and its latest progress."""
    position = (0, 0)
    if after:
        attempt_no, seq = after.split(".")
        position = (int(attempt_no), int(seq))
    record = await service.visible_task(app, who, task_id)
    lines = await tasklogs.lines(app.store, record.id, attempt, position)
    step = await tasklogs.progress(app.store, record.id)
    attempts: dict[int, AttemptLog] = {}
    for line in lines:
        entry = attempts.get(line.attempt)
        if entry is None:
            entry = attempts[line.attempt] = AttemptLog(
                attempt=line.attempt, lines=[], truncated=False
            )
        entry.lines.append(LogLine(at=_at(line.at), stream=line.stream, text=line.text))
        if line.stream == "truncated":
            entry.truncated = True
        position = max(position, (line.attempt, line.seq))
    return TaskLogs(
        task_id=record.id,
        status=record.status.value,
        progress=None
        if step is None
        else Progress(
            attempt=step.attempt,
            progress=step.progress,
            message=step.message,
            at=_at(step.at),
        ),
        attempts=list(attempts.values()),
        cursor=f"{position[0]}.{position[1]}",
    )
