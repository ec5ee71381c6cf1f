"""The task operations behind both APIs: the REST routes (:mod:`chronoq.api.tasks`) and
the gRPC service (:mod:`chronoq.grpc.server`) are thin translations around these.

Each takes a caller already authenticated and holding the scope the operation needs
(:func:`chronoq.api.auth.authorize`) and raises what the REST API answers
(:class:`~chronoq.api.errors.ApiError`, ``NotFound``, ``InvalidTransition``, pydantic's
``ValidationError``); :func:`chronoq.api.errors.problem` turns any of them into the one
error shape either transport sends. So validation, namespaces and messages are one code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, field_validator

from chronoq import tracing
from chronoq.api.auth import Principal
from chronoq.api.errors import NUL_MESSAGE, ApiError
from chronoq.api.served import add_warnings
from chronoq.app import App
from chronoq.events import TaskEvent
from chronoq.ids import is_id
from chronoq.models import (
    ID_SCHEMA,
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

#: the ``cursor`` of task pages: the id of the last task of the previous page
TaskCursor = Annotated[
    str | None,
    Query(
        description="next_cursor of the previous page", max_length=64, json_schema_extra=ID_SCHEMA
    ),
]
StatusFilter = Annotated[Status | None, Query(description="only tasks in this status")]
QueueFilter = Annotated[str | None, Query(max_length=100)]
NameFilter = Annotated[str | None, Query(max_length=200)]
PageLimit = Annotated[int, Query(ge=1, le=500)]


class TaskQuery(BaseModel):
    """What a task listing may filter on: ``GET /v1/tasks``'s query parameters, for
    callers that do not come through FastAPI (their types are the route's)."""

    status: StatusFilter = None
    queue: QueueFilter = None
    name: NameFilter = None
    cursor: TaskCursor = None
    limit: PageLimit = 50

    @field_validator("queue", "name", "cursor")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        """What :func:`chronoq.api.errors.reject_nul` refuses in every REST query."""
        if value is not None and "\x00" in value:
            raise ValueError(NUL_MESSAGE)
        return value


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


async def visible_task(app: App, who: Principal, task_id: str) -> TaskRecord:
    """The task, if this caller's namespace may see it (else 404, as if it did not exist:
    the namespace is part of the query)."""
    return await app.store.get_task(check_id(task_id), who.namespace)


async def submit(
    app: App, who: Principal, spec: TaskCreate, traceparent: str | None = None, via: str = "rest"
) -> tuple[Task, bool]:
    """The task, in the caller's namespace, and whether it is new (False: its
    ``idempotency_key`` was seen before and this is the first task). ``traceparent``: the
    request's W3C trace context (header or gRPC metadata), parent of the submit span."""
    payload = check_payload(spec, app.settings.max_payload_bytes, "payload")
    with tracing.submit_span(traceparent, via):
        record, created = await app.store.create_task(spec, time.time(), who.home, payload=payload)
    task = record.to_api()
    await add_warnings(app, [task])
    return task, created


async def submit_batch(
    app: App, who: Principal, batch: TaskBatch, traceparent: str | None = None, via: str = "rest"
) -> TaskBatchResult:
    """All of ``batch`` in one transaction, or none of it (one submit span for all)."""
    payloads = [
        check_payload(spec, app.settings.max_payload_bytes, f"tasks.{index}.payload")
        for index, spec in enumerate(batch.tasks)
    ]
    with tracing.submit_span(traceparent, via):
        found = await app.store.create_tasks(batch.tasks, time.time(), who.home, payloads=payloads)
    items = [record.to_api() for record, _ in found]
    await add_warnings(app, items)
    return TaskBatchResult(items=items, created=[created for _, created in found])


async def get(app: App, who: Principal, task_id: str) -> Task:
    """The task with its attempts."""
    record = await visible_task(app, who, task_id)
    task = record.to_api(await app.store.get_attempts(task_id))
    await add_warnings(app, [task])
    return task


async def list_tasks(app: App, who: Principal, query: TaskQuery) -> TaskPage:
    """A page of the caller's tasks, newest first."""
    if query.cursor is not None:
        check_id(query.cursor, "cursor")
    records = await app.store.list_tasks(
        status=query.status,
        queue=query.queue,
        name=query.name,
        cursor=query.cursor,
        namespace=who.namespace,
        limit=query.limit + 1,
    )
    more = len(records) > query.limit
    records = records[: query.limit]
    return TaskPage(
        items=[r.to_api() for r in records], next_cursor=records[-1].id if more else None
    )


async def cancel(app: App, who: Principal, task_id: str) -> Task:
    record = await app.store.cancel_task(check_id(task_id), time.time(), who.namespace)
    return record.to_api()


async def retry(app: App, who: Principal, task_id: str) -> Task:
    record = await app.store.retry_task(check_id(task_id), time.time(), who.namespace)
    return record.to_api()


async def delete(app: App, who: Principal, task_id: str) -> None:
    await app.store.delete_task(check_id(task_id), who.namespace)


#: what an event stream may be filtered on
EVENT_FILTERS = ("task_id", "queue", "name", "schedule_id")


def event_filter(filters: Mapping[str, str], who: Principal) -> Callable[[TaskEvent], bool]:
    """Whether an event goes to this stream: every given filter matches (empty ones are
    ignored), and a caller bound to a namespace sees only that namespace's events."""
    wanted = {k: v for k in EVENT_FILTERS if (v := filters.get(k))}
    if who.namespace is not None:
        wanted["namespace"] = who.namespace

    def matches(event: TaskEvent) -> bool:
        return all(getattr(event, k) == v for k, v in wanted.items())

    return matches
