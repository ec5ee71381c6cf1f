"""``/v1/queues/{queue}/pause`` and ``/resume``: stop and restart claiming from a queue;
:func:`with_limits`, the flow-control part of ``GET /v1/queues``.

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
from chronoq.models import KeyUsage, QueueLimits, QueueStats, RateState, to_datetime
from chronoq.store import Store, limits

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
    pause = await app.store.pauses.pause(queue, time.time(), who.key_id)
    return QueuePauseState(
        queue=queue, paused=True, paused_at=to_datetime(pause.paused_at), paused_by=pause.paused_by
    )


@router.post("/{queue}/resume", response_model=QueuePauseState, summary="Resume a queue")
async def resume_queue(queue: QueueName, app: AppDep, who: Writer) -> QueuePauseState:
    """Workers of the queue are woken and claim its queued tasks at once (with Redis, they
    are published again). Resuming a queue that is not paused changes nothing."""
    _unscoped(who)
    if await app.store.pauses.resume(queue) and app.publisher is not None:
        await app.publisher.republish(app.store, queue)
    return QueuePauseState(queue=queue, paused=False)


#: keys shown per queue (the busiest: running, then queued)
SHOWN_KEYS = 20


async def with_limits(store: Store, stats: list[QueueStats], now: float) -> list[QueueStats]:
    """``stats`` with the concurrency keys and rate limits of the queues that have keyed
    tasks (:mod:`chronoq.store.limits`); queues without any are left as they are, at the
    cost of one cached read."""
    limited = await store.limits.queues()
    wanted = [q.queue for q in stats if q.queue in limited]
    if not wanted:
        return stats
    usage = await store.limits.usage(now, wanted)
    counts = limits.waiting(usage)
    for entry in stats:
        if entry.queue not in limited:
            continue
        keys = [r for r in usage["keys"] if r["queue"] == entry.queue]
        rates = [r for r in usage["rates"] if r["queue"] == entry.queue]

        keys.sort(key=lambda r: (-int(r["running"]), -int(r["queued"]), str(r["key"])))
        entry.limits = QueueLimits(
            waiting_on_concurrency=counts.get((entry.queue, "concurrency"), 0),
            waiting_on_rate=counts.get((entry.queue, "rate"), 0),
            keys_total=len(keys),
            keys=[
                KeyUsage(
                    key=r["key"],
                    running=int(r["running"]),
                    queued=int(r["queued"]),
                    limit=r["lim"],
                    full=limits.key_full(r),
                )
                for r in keys[:SHOWN_KEYS]
            ],
            rates=[
                RateState(
                    key=r["key"],
                    per_second=1.0 / float(r["spacing"]),
                    next_turn_at=to_datetime(max(float(r["tat"]), now)),
                    waiting=int(r["waiting"]),
                )
                for r in sorted(rates, key=lambda r: -int(r["waiting"]))[:SHOWN_KEYS]
            ],
        )
    return stats
