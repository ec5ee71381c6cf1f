"""``/v1/queues/{queue}/pause`` and ``/resume``: stop and restart claiming from a queue.

A pause is global (queues are shared between namespaces and workers serve whole queues),
so only a key bound to no namespace may pause or resume; a namespaced key gets 403. Both
calls are idempotent. The queue listing itself is ``GET /v1/queues`` (:mod:`.tasks`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from chronoq.api.auth import Principal, Writer
from chronoq.api.errors import ApiError, responses
from chronoq.api.tasks import AppDep
from chronoq.models import to_datetime

router = APIRouter(prefix="/v1/queues", tags=["queues"], responses=responses(401, 403, 422))

QueueName = Annotated[
    str,
    Path(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$", description="the queue's name"
    ),
]


class QueuePauseState(BaseModel):
    queue: str
    paused: bool
    paused_at: datetime | None = None
    paused_by: str | None = None


def _unscoped(who: Principal) -> None:
    if who.namespace is not None:
        raise ApiError(
            403,
            "forbidden",
            "pausing or resuming a queue affects every "
            "namespace: it takes a key not bound to a namespace",
        )


@router.post("/{queue}/pause", response_model=QueuePauseState, summary="Pause a queue")
async def pause_queue(queue: QueueName, app: AppDep, who: Writer) -> QueuePauseState:
    """Workers stop claiming the queue's tasks (running ones finish); new and waiting tasks
    stay queued. Pausing a paused queue changes nothing. `write` scope, no namespace."""
    _unscoped(who)
    pause = await app.store.pause_queue(queue, time.time(), who.key_id)
    return QueuePauseState(
        queue=queue, paused=True, paused_at=to_datetime(pause.paused_at), paused_by=pause.paused_by
    )


@router.post("/{queue}/resume", response_model=QueuePauseState, summary="Resume a queue")
async def resume_queue(queue: QueueName, app: AppDep, who: Writer) -> QueuePauseState:
    """Workers of the queue are woken and claim its queued tasks at once (with Redis, they
    are published again). Resuming a queue that is not paused changes nothing."""
    _unscoped(who)
    if await app.store.resume_queue(queue) and app.publisher is not None:
        await app.publisher.republish(app.store, queue)
    return QueuePauseState(queue=queue, paused=False)
