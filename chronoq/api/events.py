"""``GET /v1/events`` (WebSocket): task state changes as they happen.

Each message is a JSON list of events ``{"type": "task", "task_id", "name", "queue",
"status", "attempt", "at", "schedule_id", "error", "duration", "wait", "priority",
"namespace"}``. Query parameters ``task_id``, ``queue``, ``name`` and ``schedule_id`` keep
only matching events. Every task event carries a ``cursor``. ``?types=worker`` (or
``types=task,worker``) asks for worker events too, ``{"type": "worker", "worker_id",
"status", ...}`` (a process-pool child replaced; :class:`chronoq.events.WorkerEvent`),
``worker_id`` keeping one worker's; the task filters and cursors do not apply to them (they
are live only). ``types=progress`` adds running handlers' progress, ``{"type": "progress",
"task_id", "name", "queue", "attempt", "at", "progress", "message", "worker_id",
"namespace"}`` (:class:`chronoq.events.ProgressEvent`; at most two a second per attempt),
filtered by ``task_id``, ``queue`` and ``name`` and the key's namespace; live only.
``types=log`` adds the lines running handlers log and print as the worker stores them
(about twice a second), ``{"type": "log", "task_id", "name", "queue", "attempt", "seq",
"at", "lines": [{"at", "stream", "text"}], "worker_id", "namespace"}``
(:class:`chronoq.events.LogEvent`: at most 16 KiB of text each; ``seq`` counts the
attempt's chunks from 1, and ``GET /v1/tasks/{id}/logs?after=<attempt>.<seq>`` reads what
followed, so a client that sees a ``seq`` skipped, or reconnects, fetches the gap), with
the same filters as progress; live only.
``?types=workflow`` asks for workflow events, ``{"type": "workflow",
"workflow_id", "status", "name", "node", "task_id", "task_name", "step_status", "error",
"at", "namespace"}`` — ``status`` one of ``started``, ``step_finished``, ``succeeded``,
``failed``, ``cancelled``, ``resumed`` (:class:`chronoq.events.WorkflowEvent`) —,
``workflow_id`` keeping one workflow's; live only too, and a namespaced key sees only its
namespace's. Unknown types close the socket with 4400.

Resume: ``?since=<cursor>`` (the last event's) replays, in order and once each, the
events the client missed that the API process still holds (:mod:`chronoq.api.replay`:
the last 20,000, while some socket was open in the last 5 minutes), then goes on live.
``?since=latest`` starts from now. Either way the first message is ``[{"type": "stream",
"cursor", "reset"}]``; ``reset: true`` (with a ``reason``) means the missed events are
gone (a restart, or too old): reload, then go on from that cursor. A cursor this API
never handed out closes the socket with 4422.

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
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from chronoq.api.auth import key_cache, until_revoked, websocket_caller
from chronoq.api.replay import BadCursor, EventLog, Position, event_log
from chronoq.api.service import event_filter
from chronoq.app import App
from chronoq.events import (
    EventBus,
    LogEvent,
    LogSubscription,
    ProgressEvent,
    TaskEvent,
    WorkflowSubscription,
)

router = APIRouter(tags=["events"])

TYPES = ("task", "worker", "progress", "workflow", "log")


@router.websocket("/v1/events")
async def events(websocket: WebSocket) -> None:
    app: App = websocket.app.state.chronoq
    # subscribed before the accept: a client that starts a workflow once connected hears
    # its `started`, one that reads a task's logs once connected misses no line in between
    # (dropped unheard if the socket is refused below)
    wanted = websocket.query_params.get("types", "task").split(",")
    flows = app.store.events.subscribe_workflows() if "workflow" in wanted else None
    logs = app.store.events.subscribe_logs() if "log" in wanted else None
    try:
        await _events(websocket, app, flows, logs)
    finally:
        if flows is not None:
            flows.close()
        if logs is not None:
            logs.close()


async def _events(
    websocket: WebSocket,
    app: App,
    flows: WorkflowSubscription | None,
    logs: LogSubscription | None,
) -> None:
    since = websocket.query_params.get("since")
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
    worker_id = websocket.query_params.get("worker_id")
    matches = event_filter(websocket.query_params, who)
    log = event_log(websocket.app.state, app.store.events)
    try:
        start = log.position(since or "latest")
    except BadCursor as exc:  # mirrors HTTP 422
        await websocket.close(code=4422, reason=str(exc)[:120])
        return

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
    sending = asyncio.Lock()  # the task and worker loops share the socket

    async def send(items: list[dict[str, object]]) -> None:
        async with sending:
            await websocket.send_text(orjson.dumps(items).decode())

    running: list[asyncio.Future[None]] = []
    tasks = "task" in types
    if tasks:
        log.attach()
    try:
        if tasks:
            if since is not None:
                await send([_hello(log, start)])
            running.append(
                asyncio.ensure_future(_tail(send, log, start.after, matches, since is not None))
            )
        if "worker" in types:
            running.append(asyncio.ensure_future(_workers(send, app.store.events, worker_id)))
        if "progress" in types:
            keep = _progress_filter(websocket.query_params, who.namespace)
            running.append(asyncio.ensure_future(_progress(send, app.store.events, keep)))
        if logs is not None:
            keep_lines = _progress_filter(websocket.query_params, who.namespace)
            running.append(asyncio.ensure_future(_logs(send, logs, keep_lines)))
        if flows is not None:
            workflow_id = websocket.query_params.get("workflow_id")
            running.append(
                asyncio.ensure_future(_workflows(send, flows, workflow_id, who.namespace))
            )
        watched: list[asyncio.Future[Any]] = [*running, closed, revoked]
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for job in running:
            if job.done():
                job.result()  # a send that failed: the client is gone
        if revoked.done() and not closed.done():
            await websocket.close(code=4401, reason="API key revoked")
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for job in running:
            job.cancel()
        if tasks:
            log.detach()
        closed.cancel()
        revoked.cancel()


Send = Callable[[list[dict[str, object]]], Awaitable[None]]


def _hello(log: EventLog, start: Position) -> dict[str, object]:
    """The first message of a resuming socket: where it starts, and whether the client
    must reload what it shows (``reset``) because the events it missed are gone."""
    hello: dict[str, object] = {"type": "stream", "cursor": log.cursor(start.after)}
    hello["reset"] = start.reset
    if start.reset:
        hello["reason"] = start.reason
    return hello


async def _tail(
    send: Send,
    log: EventLog,
    seq: int,
    matches: Callable[[TaskEvent], bool],
    resumable: bool,
) -> None:
    """Send the log's task events after ``seq`` that ``matches`` keeps, each with its
    cursor, until cancelled (the client left or its key was revoked)."""
    log_id = log.id
    while True:
        if log.id != log_id:  # the log restarted under us: what it held is gone
            log_id, seq = log.id, log.last
            if resumable:
                await send([_hello(log, Position(seq, True, "the stream restarted"))])
        found = log.after(seq)
        if found is None:  # fell behind the ring while sending: say so, go on from now
            seq = log.last
            if resumable:
                await send([_hello(log, Position(seq, True, "fell behind"))])
            continue
        batch, last = found
        if batch:
            items: list[dict[str, object]] = [
                {**e.to_wire(), "cursor": log.cursor(seq + 1 + i)}
                for i, e in enumerate(batch)
                if matches(e)
            ]
            seq = last
            if items:
                await send(items)
            continue
        await log.wait(seq, log_id)


async def _workers(send: Send, bus: EventBus, worker_id: str | None) -> None:
    """Send worker events (live only: they are rare and not kept for replay)."""
    with bus.subscribe_workers() as feed:
        async for batch in feed:
            items: list[dict[str, object]] = [
                e.to_wire() for e in batch if worker_id is None or e.worker_id == worker_id
            ]
            if items:
                await send(items)


def _progress_filter(
    params: Any, namespace: str | None
) -> Callable[[ProgressEvent | LogEvent], bool]:
    """Progress and log events of the ``task_id``, ``queue`` and ``name`` asked for, of
    the key's namespace."""
    wanted = {k: v for k in ("task_id", "queue", "name") if (v := params.get(k))}
    if namespace is not None:
        wanted["namespace"] = namespace

    def keep(event: ProgressEvent | LogEvent) -> bool:
        return all(getattr(event, k) == v for k, v in wanted.items())

    return keep


async def _progress(send: Send, bus: EventBus, keep: Callable[[ProgressEvent], bool]) -> None:
    """Send progress events (live only, like worker events)."""
    with bus.subscribe_progress() as feed:
        async for batch in feed:
            items: list[dict[str, object]] = [e.to_wire() for e in batch if keep(e)]
            if items:
                await send(items)


async def _logs(
    send: Send, feed: LogSubscription, keep: Callable[[ProgressEvent | LogEvent], bool]
) -> None:
    """Send log events from ``feed`` (live only; the feed is the caller's to close)."""
    async for batch in feed:
        items: list[dict[str, object]] = [e.to_wire() for e in batch if keep(e)]
        if items:
            await send(items)


async def _workflows(
    send: Send, feed: WorkflowSubscription, workflow_id: str | None, namespace: str | None
) -> None:
    """Send workflow events from ``feed`` (live only), of one workflow when ``workflow_id``
    is given and of the caller's namespace when its key is bound to one."""
    async for batch in feed:  # the feed is the caller's to close
        items: list[dict[str, object]] = [
            e.to_wire()
            for e in batch
            if (workflow_id is None or e.workflow_id == workflow_id)
            and (namespace is None or e.namespace == namespace)
        ]
        if items:
            await send(items)
