"""``/v1/workers``: the worker processes and their last heartbeat."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from chronoq.api.auth import Reader
from chronoq.api.errors import responses
from chronoq.api.tasks import AppDep
from chronoq.models import WorkerInfo

router = APIRouter(prefix="/v1/workers", tags=["workers"], responses=responses(401, 403))


@router.get("", response_model=list[WorkerInfo], summary="List workers")
async def list_workers(
    app: AppDep,
    who: Reader,
    include_all: Annotated[
        bool, Query(alias="all", description="include stopped and dead workers")
    ] = False,
) -> list[WorkerInfo]:
    """Alive workers (newest first); `all=true` adds stopped and dead ones."""
    return await app.store.list_workers(include_gone=include_all)
