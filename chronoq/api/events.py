"""``GET /v1/events`` (WebSocket): task state changes as they happen.

Each message is a JSON list of events ``{"type": "task", "task_id", "name", "queue",
"status", "attempt", "at", "schedule_id", "error", "duration", "wait", "priority",
"namespace"}``. Query parameters ``task_id``, ``queue``, ``name`` and ``schedule_id`` keep
only matching events. ``?types=worker`` (or ``types=task,worker``) asks for worker events
too, ``{"type": "worker", "worker_id", "status", ...}`` (a process-pool child replaced;
:class:`chronoq.events.WorkerEvent`), ``worker_id`` keeping one worker's; the task filters
do not apply to them. Unknown types close the socket with 4400.

With auth on, a client sends its key as ``Authorization: Bearer``, or (browsers cannot set
WebSocket headers) as the subprotocol after ``chronoq.bearer`` —
``new WebSocket(url, ["chronoq.bearer", key])``, answered with ``chronoq.bearer`` — or as
``?token=`` (proxies log query strings: for scripts only). A key bound to a namespace only
receives that namespace's events. A refused key gets close code 4401 (4429 when rate
limited); a key revoked while its stream is open gets 4401 within the key cache's time
(``CHRONOQ_KEY_CACHE_SECONDS``, 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from chronoq.api.auth import until_revoked, websocket_caller
from chronoq.app import App
from chronoq.events import Feed, TaskEvent, WorkerEvent

router = APIRouter(tags=["events"])

FILTERS = ("task_id", "queue", "name", "schedule_id")
TYPES = ("task", "worker")


@router.websocket("/v1/events")
async def events(websocket: WebSocket) -> None:
    app: App = websocket.app.state.chronoq
    wanted = {k: v for k in FILTERS if (v := websocket.query_params.get(k))}
    caller = await websocket_caller(websocket)
    who = caller.principal
    await websocket.accept(subprotocol=caller.subprotocol)
    if who is None:  # accepted, then closed with 4401 (mirrors HTTP 401) so clients see why
        await websocket.close(code=caller.code, reason=caller.refusal[:120])
        return
    types = set(websocket.query_params.get("types", "task").split(","))
    if not types <= set(TYPES):
        unknown = ", ".join(sorted(types - set(TYPES)))
        await websocket.close(code=4400, reason=f"unknown event types: {unknown}"[:120])
        return
    if who.namespace is not None:
        wanted["namespace"] = who.namespace
    worker_id = websocket.query_params.get("worker_id")

    def matches(event: TaskEvent | WorkerEvent) -> bool:
        if isinstance(event, WorkerEvent):
            return worker_id is None or event.worker_id == worker_id
        return all(getattr(event, k) == v for k, v in wanted.items())

    async def wait_for_close() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    closed = asyncio.create_task(wait_for_close())
    never = asyncio.Event()  # with auth off there is no key to revoke
    revoked = asyncio.create_task(
        until_revoked(websocket, caller.secret) if caller.secret and who.key_id else never.wait()
    )
    bus = app.store.events
    feeds: list[Feed[Any]] = []
    if "task" in types:
        feeds.append(bus.subscribe())
    if "worker" in types:
        feeds.append(bus.subscribe_workers())
    batches: dict[Feed[Any], asyncio.Future[list[Any]]] = {
        feed: asyncio.ensure_future(anext(feed)) for feed in feeds
    }
    try:
        while not closed.done():
            waiting: list[asyncio.Future[Any]] = [*batches.values(), closed, revoked]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            ready = [feed for feed, batch in batches.items() if batch.done()]
            if not ready:
                if revoked.done() and not closed.done():
                    await websocket.close(code=4401, reason="API key revoked")
                break
            items: list[dict[str, Any]] = []
            for feed in ready:
                items += [e.to_wire() for e in batches[feed].result() if matches(e)]
                batches[feed] = asyncio.ensure_future(anext(feed))
            if items:
                await websocket.send_text(orjson.dumps(items).decode())
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for feed, batch in batches.items():
            batch.cancel()
            feed.close()
        closed.cancel()
        revoked.cancel()
