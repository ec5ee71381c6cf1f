"""``GET /v1/events`` (WebSocket): task state changes as they happen.

Each message is a JSON list of events ``{"type": "task", "task_id", "name", "queue",
"status", "attempt", "at", "schedule_id", "error", "duration", "wait", "priority",
"namespace"}``. Query parameters ``task_id``, ``queue``, ``name`` and ``schedule_id`` keep
only matching events.

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

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from chronoq.api.auth import key_cache, until_revoked, websocket_caller
from chronoq.api.service import event_filter
from chronoq.app import App

router = APIRouter(tags=["events"])


@router.websocket("/v1/events")
async def events(websocket: WebSocket) -> None:
    app: App = websocket.app.state.chronoq
    caller = await websocket_caller(websocket)
    who = caller.principal
    await websocket.accept(subprotocol=caller.subprotocol)
    if who is None:  # accepted, then closed with 4401 (mirrors HTTP 401) so clients see why
        await websocket.close(code=caller.code, reason=caller.refusal[:120])
        return
    matches = event_filter(websocket.query_params, who)

    async def wait_for_close() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    closed = asyncio.create_task(wait_for_close())
    never = asyncio.Event()  # with auth off there is no key to revoke
    revoked = asyncio.create_task(
        until_revoked(app, key_cache(websocket.app), caller.secret)
        if caller.secret and who.key_id
        else never.wait()
    )
    with app.store.events.subscribe() as subscription:
        try:
            while not closed.done():
                next_batch = asyncio.ensure_future(anext(subscription))
                await asyncio.wait(
                    [next_batch, closed, revoked], return_when=asyncio.FIRST_COMPLETED
                )
                if not next_batch.done():
                    next_batch.cancel()
                    if revoked.done() and not closed.done():
                        await websocket.close(code=4401, reason="API key revoked")
                    break
                items = [e.to_wire() for e in next_batch.result() if matches(e)]
                if items:
                    await websocket.send_text(orjson.dumps(items).decode())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            closed.cancel()
            revoked.cancel()
