"""What the worker and its child processes say to each other: one JSON object per line.

Parent -> child, one task at a time::

    {"id": task_id, "attempt": 2, "name": "resize", "queue": "default",
     "max_attempts": 3, "worker_id": "...", "payload": {...}, "traceparent": "00-..."}

(``traceparent`` only when the worker traces: :mod:`chronoq.tracing`.)

Child -> parent: ``{"ready": pid, "handlers": [...]}`` once it imported the app, then one
reply per task: ``{"id": ..., "ok": true, "result": ...}`` or ``{"id": ..., "ok": false,
"type": "ValueError", "message": "...", "traceback": "...", "retry": true,
"task_failed": false}``. While a task runs, before its reply, the child also sends what
the handler logs and prints, ``{"log": task_id, "s": "stdout", "t": "text"}``, and its
progress, ``{"progress": task_id, "v": 0.4, "m": "step 2 of 5"}``. JSON only (orjson),
never pickle: a child can only send data back.
"""

from __future__ import annotations

import traceback
from typing import Any

import orjson

from chronoq import tracing
from chronoq.executors.base import Journal, TaskContext, TaskFailed


def request(context: TaskContext, payload: dict[str, Any]) -> bytes:
    """The line that asks a child to run one attempt; when tracing, with the run span's
    ``traceparent`` (the child's handler spans are its children)."""
    message = {
        "id": context.task_id,
        "attempt": context.attempt,
        "name": context.name,
        "queue": context.queue,
        "max_attempts": context.max_attempts,
        "worker_id": context.worker_id,
        "payload": payload,
    }
    if tracing.tracer is not None:
        message["traceparent"] = tracing.current_traceparent()
    return orjson.dumps(message) + b"\n"


def context_of(message: dict[str, Any], journal: Journal | None = None) -> TaskContext:
    return TaskContext(
        message["id"],
        message["name"],
        message["queue"],
        message["attempt"],
        message["max_attempts"],
        message["worker_id"],
        journal,
    )


def log_line(task_id: str, stream: str, text: str) -> bytes:
    """A captured write of the handler running ``task_id``."""
    return orjson.dumps({"log": task_id, "s": stream, "t": _text(text)}) + b"\n"


def progress_line(task_id: str, value: float, message: str | None) -> bytes:
    return orjson.dumps({"progress": task_id, "v": value, "m": message}) + b"\n"


def is_journal(message: dict[str, Any]) -> bool:
    """Whether a child's line is a captured write or a progress report (not a reply)."""
    return "log" in message or "progress" in message


def success(task_id: str, result: Any, limit: int) -> bytes:
    """The reply for a handler's result; a failure reply when it is not JSON or too big."""
    try:
        line = orjson.dumps({"id": task_id, "ok": True, "result": result})
    except TypeError:
        return failure_line(
            task_id,
            TaskFailed(f"result is not JSON-serialisable: {type(result).__name__}"),
            with_traceback=False,
        )
    if len(line) > limit:
        return failure_line(
            task_id,
            TaskFailed(
                f"result is {len(line)} bytes of JSON, more than the {limit} a child may send"
            ),
            with_traceback=False,
        )
    return line + b"\n"


def failure_line(task_id: str, exc: BaseException, *, with_traceback: bool = True) -> bytes:
    """The reply for a handler that raised: its type name, message, traceback and whether
    it may be retried (``exc.retry``, default true)."""
    return (
        orjson.dumps(
            {
                "id": task_id,
                "ok": False,
                "type": type(exc).__name__,
                "message": _text(str(exc)),
                "traceback": _text("".join(traceback.format_exception(exc)))
                if with_traceback
                else None,
                "retry": bool(getattr(exc, "retry", True)),
                "task_failed": isinstance(exc, TaskFailed),
            },
            default=str,
        )
        + b"\n"
    )


def _text(text: str) -> str:
    """``text`` as JSON can carry it (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")
