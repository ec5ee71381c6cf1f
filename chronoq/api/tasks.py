"""``/v1/tasks`` and ``/v1/queues``: submit, list, inspect, cancel and retry tasks.

The routes translate HTTP to :mod:`chronoq.api.service`, which the gRPC API shares."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from chronoq.api import service
from chronoq.api.auth import Reader, Writer
from chronoq.api.errors import responses
from chronoq.api.service import (
    NameFilter,
    PageLimit,
    QueueFilter,
    StatusFilter,
    TaskCursor,
    TaskQuery,
)
from chronoq.app import App
from chronoq.models import (
    ID_SCHEMA,
    QueueStats,
    Task,
    TaskBatch,
    TaskBatchResult,
    TaskCreate,
    TaskPage,
)

router = APIRouter(prefix="/v1", tags=["tasks"], responses=responses(401, 403))


def get_app(request: Request) -> App:
    app: App = request.app.state.chronoq
    return app


AppDep = Annotated[App, Depends(get_app)]
TaskId = Annotated[
    str, Path(description="task id (a UUID)", max_length=64, json_schema_extra=ID_SCHEMA)
]


@router.post(
    "/tasks",
    status_code=201,
    response_model=Task,
    responses={
        200: {
            "model": Task,
            "description": "A task with this idempotency_key existed, or a waiting or "
            "running one holds this unique_key",
        },
        **responses(413, 422),
    },
    summary="Submit a task",
)
async def create_task(
    spec: TaskCreate, app: AppDep, request: Request, response: Response, who: Writer
) -> Task:
    """Run `name` with `payload` now, at `run_at`, or after `delay_seconds`. Sending the
    same `idempotency_key` again returns the first task (status 200) instead of a copy;
    so does an equal submission (same `unique_key`, by default name + payload) within
    `unique_for` seconds while the first still waits or runs. A W3C `traceparent` header
    makes the task's trace a child of the caller's."""
    task, created = await service.submit(app, who, spec, request.headers.get("traceparent"))
    if not created:
        response.status_code = 200
    return task


@router.post(
    "/tasks/batch",
    status_code=201,
    response_model=TaskBatchResult,
    responses=responses(413, 422),
    summary="Submit several tasks at once",
)
async def create_tasks(
    batch: TaskBatch, app: AppDep, request: Request, who: Writer
) -> TaskBatchResult:
    """Up to 1,000 tasks in one request and one database transaction: all are accepted
    or none is. Each is what `POST /v1/tasks` takes; an `idempotency_key` seen before
    returns the earlier task (`created: false` at its position)."""
    return await service.submit_batch(app, who, batch, request.headers.get("traceparent"))


@router.get("/tasks", response_model=TaskPage, responses=responses(422), summary="List tasks")
async def list_tasks(
    app: AppDep,
    who: Reader,
    status: StatusFilter = None,
    queue: QueueFilter = None,
    name: NameFilter = None,
    cursor: TaskCursor = None,
    limit: PageLimit = 50,
) -> TaskPage:
    """Newest first. `status=dead` lists the dead-letter queue."""
    query = TaskQuery(status=status, queue=queue, name=name, cursor=cursor, limit=limit)
    return await service.list_tasks(app, who, query)


@router.get(
    "/tasks/{task_id}",
    response_model=Task,
    responses=responses(404, 422),
    summary="Get a task with its attempts",
)
async def get_task(task_id: TaskId, app: AppDep, who: Reader) -> Task:
    return await service.get(app, who, task_id)


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=Task,
    responses=responses(404, 409, 422),
    summary="Cancel a task",
)
async def cancel_task(task_id: TaskId, app: AppDep, who: Writer) -> Task:
    """Scheduled, queued and waiting tasks never run; a running task is stopped."""
    return await service.cancel(app, who, task_id)


@router.post(
    "/tasks/{task_id}/retry",
    response_model=Task,
    responses=responses(404, 409, 422),
    summary="Retry a failed or dead task now",
)
async def retry_task(task_id: TaskId, app: AppDep, who: Writer) -> Task:
    """Send a task from the dead-letter queue (or waiting for its backoff) back to the queue."""
    return await service.retry(app, who, task_id)


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    responses=responses(404, 409, 422),
    summary="Discard a finished task",
)
async def delete_task(task_id: TaskId, app: AppDep, who: Writer) -> Response:
    """Remove a succeeded, dead or cancelled task and its attempts (e.g. to clear the
    dead-letter queue). Unfinished tasks answer 409: cancel them first."""
    await service.delete(app, who, task_id)
    return Response(status_code=204)


@router.get(
    "/queues",
    response_model=list[QueueStats],
    tags=["queues"],
    summary="Depth and status counts per queue",
)
async def list_queues(app: AppDep, who: Reader) -> list[QueueStats]:
    """Each queue's status counts, pause and (for a key bound to no namespace: concurrency
    keys are shared by every namespace) its concurrency keys and rate limits."""
    now = time.time()
    stats = await app.store.queue_stats(now, who.namespace)
    if who.namespace is not None:
        return stats
    from chronoq.api.queues import with_limits  # chronoq.api.queues imports this module

    return await with_limits(app.store, stats, now)
