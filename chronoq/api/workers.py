"""``/v1/workers``: the worker processes and their last heartbeat; drain or stop one.

A control is a value in the worker's registry row that the worker reads back with its
next heartbeat (``CHRONOQ_HEARTBEAT_SECONDS``, 5 s), so it reaches a worker on any
machine that shares the database. ``drain``: the worker stops claiming, lets every task it
runs finish (however long), gives back what it held and exits. ``stop``: a graceful
shutdown, as SIGTERM: running tasks get the worker's drain time, then are retried. Workers
serve every namespace, so both need the ``admin`` scope of a key bound to no namespace;
such a key reads workers without the ids of the tasks they run (other namespaces' tasks).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from chronoq.api.auth import Principal, Reader, require
from chronoq.api.errors import ApiError, responses
from chronoq.api.tasks import AppDep
from chronoq.models import WorkerInfo

router = APIRouter(prefix="/v1/workers", tags=["workers"], responses=responses(401, 403))

Admin = Annotated[Principal, Depends(require("admin"))]
WorkerId = Annotated[str, Path(description="the worker's id", max_length=300)]


@router.get("", response_model=list[WorkerInfo], summary="List workers")
async def list_workers(
    app: AppDep,
    who: Reader,
    include_all: Annotated[
        bool, Query(alias="all", description="include stopped and dead workers")
    ] = False,
) -> list[WorkerInfo]:
    """Alive workers (newest first); `all=true` adds stopped and dead ones."""
    return [_seen_by(who, w) for w in await app.store.workers.all(include_gone=include_all)]


@router.get(
    "/{worker_id}", response_model=WorkerInfo, responses=responses(404), summary="Get a worker"
)
async def get_worker(worker_id: WorkerId, app: AppDep, who: Reader) -> WorkerInfo:
    """One worker with the tasks it runs and its process-pool children."""
    worker = await app.store.workers.get(worker_id)
    if worker is None:
        raise _unknown(worker_id)
    return _seen_by(who, worker)


def _seen_by(who: Principal, worker: WorkerInfo) -> WorkerInfo:
    """A key bound to a namespace does not see which tasks a worker runs: they may be
    another namespace's."""
    if who.namespace is None:
        return worker
    children = [c.model_copy(update={"task_id": None}) for c in worker.children]
    return worker.model_copy(update={"tasks": [], "children": children})


async def _control(app: AppDep, who: Principal, worker_id: str, what: str) -> WorkerInfo:
    if who.namespace is not None:
        raise ApiError(
            403,
            "forbidden",
            "workers serve every namespace: a key bound to a namespace cannot control them",
        )
    worker = await app.store.workers.control(worker_id, what)
    if worker is None:
        raise _unknown(worker_id)
    if worker.status != "alive":
        raise ApiError(409, "not_alive", f"worker {worker_id} is {worker.status}")
    return worker


@router.post(
    "/{worker_id}/drain",
    response_model=WorkerInfo,
    responses=responses(404, 409),
    summary="Drain a worker: finish what it runs, then exit",
)
async def drain_worker(worker_id: WorkerId, app: AppDep, who: Admin) -> WorkerInfo:
    """The worker stops claiming at its next heartbeat, finishes every running task and
    exits. `admin` scope."""
    return await _control(app, who, worker_id, "drain")


@router.post(
    "/{worker_id}/stop",
    response_model=WorkerInfo,
    responses=responses(404, 409),
    summary="Stop a worker gracefully",
)
async def stop_worker(worker_id: WorkerId, app: AppDep, who: Admin) -> WorkerInfo:
    """A graceful shutdown at the worker's next heartbeat, as SIGTERM: running tasks get
    its drain time, then go back to be retried. `admin` scope."""
    return await _control(app, who, worker_id, "stop")


def _unknown(worker_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no worker {worker_id!r}")
