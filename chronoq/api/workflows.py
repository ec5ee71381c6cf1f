"""``/v1/workflows``: start a graph of tasks, see every node's state, list, cancel, retry.

The graph is checked by its model (:mod:`chronoq.dag`): a cycle, an unknown node id or a
graph over the size limit is a 422 that names it. Namespaces and scopes are those of
tasks: a caller sees and cancels only its namespace's workflows, with ``read`` / ``write``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Path, Query

from chronoq.api.auth import Reader, Writer
from chronoq.api.errors import ApiError, responses
from chronoq.api.service import PageLimit, check_id, check_payload
from chronoq.api.tasks import AppDep
from chronoq.dag import Workflow, WorkflowCreate, WorkflowPage
from chronoq.models import ID_SCHEMA
from chronoq.store import workflows

router = APIRouter(prefix="/v1", tags=["workflows"], responses=responses(401, 403))

WorkflowId = Annotated[
    str, Path(description="workflow id (a UUID)", max_length=64, json_schema_extra=ID_SCHEMA)
]
WorkflowCursor = Annotated[
    str | None,
    Query(
        description="next_cursor of the previous page", max_length=64, json_schema_extra=ID_SCHEMA
    ),
]


@contextmanager
def _found(workflow_id: str) -> Iterator[None]:
    """422 for a malformed id; 404 when no workflow of the caller's has it."""
    check_id(workflow_id, "workflow_id")
    try:
        yield
    except workflows.WorkflowNotFound:
        raise ApiError(404, "not_found", f"no workflow with id {workflow_id}") from None


@router.post(
    "/workflows",
    status_code=201,
    response_model=Workflow,
    responses=responses(413, 422),
    summary="Start a workflow",
)
async def create_workflow(spec: WorkflowCreate, app: AppDep, who: Writer) -> Workflow:
    """Store the nodes and edges in one transaction; nodes without parents are queued at
    once, each other node when its last parent succeeds. A child receives each parent's
    result as the keyword `arg` of their edge (default: the parent's id), or at `position`
    of the list `arg`."""
    for index, node in enumerate(spec.nodes):
        check_payload(node.task, app.settings.max_payload_bytes, f"nodes.{index}.task.payload")
    started = await workflows.create(app.store, spec, time.time(), who.home)
    return started.workflow


@router.get(
    "/workflows", response_model=WorkflowPage, responses=responses(422), summary="List workflows"
)
async def list_workflows(
    app: AppDep, who: Reader, cursor: WorkflowCursor = None, limit: PageLimit = 50
) -> WorkflowPage:
    """Newest first, each with its count of nodes per status."""
    if cursor is not None:
        check_id(cursor, "cursor")
    found = await workflows.list_workflows(app.store, who.namespace, cursor, limit + 1)
    more = len(found) > limit
    found = found[:limit]
    return WorkflowPage(items=found, next_cursor=found[-1].id if more else None)


@router.get(
    "/workflows/{workflow_id}",
    response_model=Workflow,
    responses=responses(404, 422),
    summary="Get a workflow with every node's state",
)
async def get_workflow(workflow_id: WorkflowId, app: AppDep, who: Reader) -> Workflow:
    with _found(workflow_id):
        return await workflows.get(app.store, workflow_id, who.namespace)


@router.post(
    "/workflows/{workflow_id}/cancel",
    response_model=Workflow,
    responses=responses(404, 422),
    summary="Cancel a workflow",
)
async def cancel_workflow(workflow_id: WorkflowId, app: AppDep, who: Writer) -> Workflow:
    """Every node that has not finished is cancelled; running ones are stopped."""
    with _found(workflow_id):
        return await workflows.cancel(app.store, workflow_id, time.time(), who.namespace)


@router.post(
    "/workflows/{workflow_id}/retry",
    response_model=Workflow,
    responses=responses(404, 422),
    summary="Retry a workflow's dead steps",
)
async def retry_workflow(workflow_id: WorkflowId, app: AppDep, who: Writer) -> Workflow:
    """Every dead step (and every failed one waiting for its backoff) runs again now; the
    steps that failed because of them wait for them again. Cancelled steps stay
    cancelled."""
    with _found(workflow_id):
        return await workflows.retry(app.store, workflow_id, time.time(), who.namespace)
