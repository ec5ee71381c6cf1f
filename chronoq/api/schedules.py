"""``/v1/schedules``: recurring work — create, inspect, change, pause, trigger, list runs."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import ValidationError

from chronoq.api.auth import Principal, Reader, Writer
from chronoq.api.errors import ApiError, merged_conflict, responses
from chronoq.api.limits import check_schedule_rate
from chronoq.api.service import TaskCursor, check_id, check_payload
from chronoq.api.tasks import AppDep
from chronoq.app import App
from chronoq.dag import WorkflowCreate
from chronoq.models import (
    Schedule,
    ScheduleCreate,
    SchedulePage,
    ScheduleUpdate,
    Task,
    TaskPage,
    TaskTemplate,
)
from chronoq.store.schedules import ScheduleAmbiguous, ScheduleRecord, id_like

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=responses(401, 403))

Key = Annotated[
    str,
    Path(
        description="schedule id, or name in the caller's namespace (a "
        "key shaped like an id is an id)",
        max_length=200,
    ),
]


async def visible_schedule(app: App, who: Principal, key: str) -> ScheduleRecord:
    """The schedule ``key`` (an id if it looks like one, else a name) among those the
    caller's namespace holds: another namespace's is a 404, as if it did not exist. A key
    of every namespace (or no auth) finds any, and a name several namespaces use is a 409."""
    try:
        return await app.store.schedules.get(key, who.namespace)
    except ScheduleAmbiguous as exc:
        raise ApiError(
            409,
            "ambiguous_name",
            f"schedules named {exc.name!r} exist in "
            f"namespaces {', '.join(exc.namespaces)}: use the schedule's id",
        ) from None


@router.post(
    "",
    status_code=201,
    response_model=Schedule,
    responses=responses(409, 413, 422),
    summary="Create a recurring schedule",
)
async def create_schedule(spec: ScheduleCreate, app: AppDep, who: Writer) -> Schedule:
    """Fire `task` on a `cron` expression (in `timezone`) or every `interval_seconds`."""
    if id_like(spec.name):
        raise ApiError(
            422,
            "validation_error",
            "a schedule name may not be shaped like an id "
            "(a UUID): /v1/schedules/{key} reads such a key as an id",
            "name",
        )
    check_schedule_rate(spec, app.settings)
    _check_payloads(spec.task, spec.workflow, app.settings.max_payload_bytes)
    return (await app.store.schedules.create(spec, time.time(), who.home)).to_api()


@router.get("", response_model=SchedulePage, responses=responses(422), summary="List schedules")
async def list_schedules(
    app: AppDep,
    who: Reader,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page", max_length=240)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SchedulePage:
    """By name, each with its next 5 fire times."""
    records = await app.store.schedules.page(cursor, limit + 1, who.namespace)
    more = len(records) > limit
    records = records[:limit]
    return SchedulePage(
        items=[r.to_api() for r in records], next_cursor=records[-1].cursor if more else None
    )


@router.get(
    "/{key}", response_model=Schedule, responses=responses(404, 409), summary="Get a schedule"
)
async def get_schedule(key: Key, app: AppDep, who: Reader) -> Schedule:
    return (await visible_schedule(app, who, key)).to_api()


@router.patch(
    "/{key}",
    response_model=Schedule,
    responses=responses(404, 409, 413, 422),
    summary="Change a schedule",
)
async def update_schedule(key: Key, changes: ScheduleUpdate, app: AppDep, who: Writer) -> Schedule:
    """Only the fields given change. Changing the rule (cron, interval, timezone, start,
    end) moves the next fire time to the first new slot after now."""
    record = await visible_schedule(app, who, key)
    check_schedule_rate(changes, app.settings)
    fields = changes.model_dump(exclude_unset=True)
    _check_payloads(changes.task, changes.workflow, app.settings.max_payload_bytes)
    if changes.task is not None:
        fields["task"] = changes.task
    if changes.workflow is not None:
        fields["workflow"] = changes.workflow
    try:
        return (await app.store.schedules.update(record.id, fields, time.time())).to_api()
    except ValidationError as exc:  # valid alone, not with the schedule's other fields
        raise merged_conflict(exc) from None


@router.delete(
    "/{key}", status_code=204, responses=responses(404, 409), summary="Delete a schedule"
)
async def delete_schedule(key: Key, app: AppDep, who: Writer) -> Response:
    """Tasks it already fired stay, with their `schedule_id`."""
    record = await visible_schedule(app, who, key)
    await app.store.schedules.delete(record.id)
    return Response(status_code=204)


@router.post(
    "/{key}/pause",
    response_model=Schedule,
    responses=responses(404, 409),
    summary="Pause a schedule",
)
async def pause_schedule(key: Key, app: AppDep, who: Writer) -> Schedule:
    """Nothing fires while paused."""
    record = await visible_schedule(app, who, key)
    return (await app.store.schedules.set_paused(record.id, True, time.time())).to_api()


@router.post(
    "/{key}/resume",
    response_model=Schedule,
    responses=responses(404, 409),
    summary="Resume a schedule",
)
async def resume_schedule(key: Key, app: AppDep, who: Writer) -> Schedule:
    """The next slot after now fires; slots that fell in the pause are not made up."""
    record = await visible_schedule(app, who, key)
    return (await app.store.schedules.set_paused(record.id, False, time.time())).to_api()


@router.post(
    "/{key}/trigger",
    status_code=201,
    response_model=Task,
    responses=responses(404, 409),
    summary="Run a schedule's task now",
)
async def trigger_schedule(key: Key, app: AppDep, who: Writer) -> Task:
    """One extra run now (slot = now); the rule is unchanged."""
    record = await visible_schedule(app, who, key)
    return (await app.store.schedules.trigger(record.id, time.time())).to_api()


@router.get(
    "/{key}/runs",
    response_model=TaskPage,
    responses=responses(404, 409, 422),
    summary="Tasks fired by a schedule",
)
async def schedule_runs(
    key: Key,
    app: AppDep,
    who: Reader,
    cursor: TaskCursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    """Newest first; each task has its `slot` (nominal fire time)."""
    record = await visible_schedule(app, who, key)
    if cursor is not None:
        check_id(cursor, "cursor")
    tasks = await app.store.list_tasks(schedule_id=record.id, cursor=cursor, limit=limit + 1)
    more = len(tasks) > limit
    tasks = tasks[:limit]
    return TaskPage(items=[t.to_api() for t in tasks], next_cursor=tasks[-1].id if more else None)


def _check_payloads(task: TaskTemplate | None, workflow: WorkflowCreate | None, limit: int) -> None:
    """413 for a task's (or a workflow node's) payload over the limit."""
    if task is not None:
        check_payload(task, limit, "task.payload")
    for index, node in enumerate(workflow.nodes if workflow is not None else ()):
        check_payload(node.task, limit, f"workflow.nodes.{index}.task.payload")
