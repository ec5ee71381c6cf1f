"""``/v1/tasks`` and ``/v1/queues``: submit, list, inspect, cancel and retry tasks."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from chronoq.api.auth import Principal, Reader, Writer
from chronoq.api.errors import ApiError, responses
from chronoq.api.served import add_warnings
from chronoq.app import App
from chronoq.ids import is_id
from chronoq.models import (
    ID_SCHEMA,
    QueueStats,
    Task,
    TaskBatch,
    TaskBatchResult,
    TaskCreate,
    TaskPage,
    TaskTemplate,
)
from chronoq.states import Status
from chronoq.store import TaskRecord
from chronoq.store.base import dumps

router = APIRouter(prefix="/v1", tags=["tasks"], responses=responses(401, 403))


def get_app(request: Request) -> App:
    app: App = request.app.state.chronoq
    return app


AppDep = Annotated[App, Depends(get_app)]
TaskId = Annotated[
    str, Path(description="task id (a UUID)", max_length=64, json_schema_extra=ID_SCHEMA)
]
#: the ``cursor`` of task pages: the id of the last task of the previous page
TaskCursor = Annotated[
    str | None,
    Query(
        description="next_cursor of the previous page", max_length=64, json_schema_extra=ID_SCHEMA
    ),
]


def check_id(task_id: str, field: str = "task_id") -> str:
    if not is_id(task_id):
        raise ApiError(
            422,
            "bad_id",
            f"{task_id!r} is not a task id (expected a lower-case "
            "UUID such as 01890a5d-ac96-774b-bcce-b302099a8057)",
            field,
        )
    return task_id


def _finite(value: object) -> bool:
    """False when a JSON value holds NaN or ±Infinity (Python's parser accepts them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


async def visible_task(app: App, who: Principal, task_id: str) -> TaskRecord:
    """The task, if this caller's namespace may see it (else 404, as if it did not exist:
    the namespace is part of the query)."""
    return await app.store.get_task(check_id(task_id), who.namespace)


@router.post(
    "/tasks",
    status_code=201,
    response_model=Task,
    responses={
        200: {"model": Task, "description": "A task with this idempotency_key existed"},
        **responses(413, 422),
    },
    summary="Submit a task",
)
async def create_task(spec: TaskCreate, app: AppDep, response: Response, who: Writer) -> Task:
    """Run `name` with `payload` now, at `run_at`, or after `delay_seconds`. Sending the
    same `idempotency_key` again returns the first task (status 200) instead of a copy."""
    payload = check_payload(spec, app.settings.max_payload_bytes, "payload")
    record, created = await app.store.create_task(spec, time.time(), who.home, payload=payload)
    if not created:
        response.status_code = 200
    task = record.to_api()
    await add_warnings(app, [task])
    return task


@router.post(
    "/tasks/batch",
    status_code=201,
    response_model=TaskBatchResult,
    responses=responses(413, 422),
    summary="Submit several tasks at once",
)
async def create_tasks(batch: TaskBatch, app: AppDep, who: Writer) -> TaskBatchResult:
    """Up to 1,000 tasks in one request and one database transaction: all are accepted
    or none is. Each is what `POST /v1/tasks` takes; an `idempotency_key` seen before
    returns the earlier task (`created: false` at its position)."""
    payloads = [
        check_payload(spec, app.settings.max_payload_bytes, f"tasks.{index}.payload")
        for index, spec in enumerate(batch.tasks)
    ]
    found = await app.store.create_tasks(batch.tasks, time.time(), who.home, payloads=payloads)
    items = [record.to_api() for record, _ in found]
    await add_warnings(app, items)
    return TaskBatchResult(items=items, created=[created for _, created in found])


def check_payload(spec: TaskTemplate, limit: int, field: str) -> str:
    """422 for a payload JSON cannot hold, 413 for one over ``limit`` bytes of JSON; else
    the payload's JSON text, which the store writes as it is (encoded once)."""
    if not _finite(spec.payload):
        raise ApiError(
            422,
            "validation_error",
            "payload contains NaN or Infinity, which JSON cannot represent",
            field,
        )
    try:
        text = dumps(spec.payload)
    except TypeError as exc:  # orjson: integers beyond 64 bits, NaN keys, ...
        raise ApiError(
            422, "validation_error", f"payload cannot be stored as JSON: {exc}", field
        ) from None
    size = len(text)
    if size > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"payload is {size} bytes of JSON; the limit is {limit}",
            field,
        )
    return text


@router.get("/tasks", response_model=TaskPage, responses=responses(422), summary="List tasks")
async def list_tasks(
    app: AppDep,
    who: Reader,
    status: Annotated[Status | None, Query(description="only tasks in this status")] = None,
    queue: Annotated[str | None, Query(max_length=100)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    cursor: TaskCursor = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    """Newest first. `status=dead` lists the dead-letter queue."""
    if cursor is not None:
        check_id(cursor, "cursor")
    records = await app.store.list_tasks(
        status=status,
        queue=queue,
        name=name,
        cursor=cursor,
        namespace=who.namespace,
        limit=limit + 1,
    )
    more = len(records) > limit
    records = records[:limit]
    return TaskPage(
        items=[r.to_api() for r in records], next_cursor=records[-1].id if more else None
    )


@router.get(
    "/tasks/{task_id}",
    response_model=Task,
    responses=responses(404, 422),
    summary="Get a task with its attempts",
)
async def get_task(task_id: TaskId, app: AppDep, who: Reader) -> Task:
    record = await visible_task(app, who, task_id)
    task = record.to_api(await app.store.get_attempts(task_id))
    await add_warnings(app, [task])
    return task


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=Task,
    responses=responses(404, 409, 422),
    summary="Cancel a task",
)
async def cancel_task(task_id: TaskId, app: AppDep, who: Writer) -> Task:
    """Scheduled, queued and waiting tasks never run; a running task is stopped."""
    record = await app.store.cancel_task(check_id(task_id), time.time(), who.namespace)
    return record.to_api()


@router.post(
    "/tasks/{task_id}/retry",
    response_model=Task,
    responses=responses(404, 409, 422),
    summary="Retry a failed or dead task now",
)
async def retry_task(task_id: TaskId, app: AppDep, who: Writer) -> Task:
    """Send a task from the dead-letter queue (or waiting for its backoff) back to the queue."""
    record = await app.store.retry_task(check_id(task_id), time.time(), who.namespace)
    return record.to_api()


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    responses=responses(404, 409, 422),
    summary="Discard a finished task",
)
async def delete_task(task_id: TaskId, app: AppDep, who: Writer) -> Response:
    """Remove a succeeded, dead or cancelled task and its attempts (e.g. to clear the
    dead-letter queue). Unfinished tasks answer 409: cancel them first."""
    await app.store.delete_task(check_id(task_id), who.namespace)
    return Response(status_code=204)


@router.get(
    "/queues",
    response_model=list[QueueStats],
    tags=["queues"],
    summary="Depth and status counts per queue",
)
async def list_queues(app: AppDep, who: Reader) -> list[QueueStats]:
    return await app.store.queue_stats(time.time(), who.namespace)
