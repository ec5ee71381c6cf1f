"""``GET /v1/events`` (WebSocket): task state changes as they happen.

Each message is a JSON list of events ``{"type": "task", "task_id", "name", "queue",
"status", "attempt", "at", "schedule_id", "error", "duration", "wait", "priority",
"namespace"}``. Query parameters ``task_id``, ``queue``, ``name`` and ``schedule_id`` keep
only matching events. With auth on, pass the key as ``Authorization: Bearer`` or
``?token=`` (browsers cannot set WebSocket headers); a key bound to a namespace only
receives that namespace's events.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from chronoq.api.auth import websocket_principal
from chronoq.app import App
from chronoq.events import TaskEvent

router = APIRouter(tags=["events"])

FILTERS = ("task_id", "queue", "name", "schedule_id")


@router.websocket("/v1/events")
async def events(websocket: WebSocket) -> None:
    app: App = websocket.app.state.chronoq
    wanted = {k: v for k in FILTERS if (v := websocket.query_params.get(k))}
    who = await websocket_principal(websocket)
    if who is None:  # accept, then close with 4401 (mirrors HTTP 401) so clients see why
        await websocket.accept()
        await websocket.close(code=4401, reason="missing, invalid or unauthorised API key")
        return
    if who.namespace is not None:
        wanted["namespace"] = who.namespace
    await websocket.accept()

    def matches(event: TaskEvent) -> bool:
        return all(getattr(event, k) == v for k, v in wanted.items())

    async def wait_for_close() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    closed = asyncio.create_task(wait_for_close())
    with app.store.events.subscribe() as subscription:
        try:
            while not closed.done():
                next_batch = asyncio.ensure_future(anext(subscription))
                await asyncio.wait([next_batch, closed], return_when=asyncio.FIRST_COMPLETED)
                if not next_batch.done():
                    next_batch.cancel()
                    break
                items = [e.to_wire() for e in next_batch.result() if matches(e)]
                if items:
                    await websocket.send_text(orjson.dumps(items).decode())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            closed.cancel()
