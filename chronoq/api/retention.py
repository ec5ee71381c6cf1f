"""``DELETE /v1/tasks``: purge finished tasks in bulk (:mod:`chronoq.retention`)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from chronoq import retention
from chronoq.api.auth import Writer
from chronoq.api.errors import ApiError, responses
from chronoq.api.tasks import AppDep
from chronoq.durations import parse_instant
from chronoq.states import Status

#: the statuses a purge may select (:data:`chronoq.states.TERMINAL`), as the schema states them
Purgeable = Literal["succeeded", "cancelled", "dead"]

router = APIRouter(prefix="/v1", tags=["tasks"], responses=responses(401, 403))


class PurgeResult(BaseModel):
    matched: int = Field(description="finished tasks the filters selected")
    deleted: int = Field(description="tasks deleted with their attempts (0 on a dry run)")


@router.delete(
    "/tasks",
    response_model=PurgeResult,
    responses=responses(422),
    summary="Purge finished tasks in bulk",
)
async def purge_tasks(
    app: AppDep,
    who: Writer,
    status: Annotated[Purgeable, Query(description="a finished status: only those can be purged")],
    before: Annotated[
        str,
        Query(
            description="finished before this ISO 8601 time, or longer ago than this "
            "duration (7d, 12h)",
            max_length=64,
        ),
    ],
    queue: Annotated[str | None, Query(max_length=100)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    dry_run: Annotated[bool, Query(description="count only, delete nothing")] = False,
) -> PurgeResult:
    """Delete finished tasks (with their attempts) of `status` that finished before
    `before`, in batches of 1,000 (one short transaction each). A key bound to a
    namespace deletes only that namespace's tasks. `write` scope, like deleting one."""
    try:
        cutoff = parse_instant(before, time.time())
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), "before") from None
    queues = await retention.queues_by_status(app.store, [Status(status)])
    expired = retention.selections(queues, cutoff, queue, who.namespace, name)
    if dry_run:
        matched = sum((await retention.counts(app.store, expired)).values())
        return PurgeResult(matched=matched, deleted=0)
    done = await retention.purge(app.store, expired, batch=app.settings.retention_batch)
    return PurgeResult(matched=done.total, deleted=done.total)
