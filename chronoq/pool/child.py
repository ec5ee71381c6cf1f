"""A pool child: imports the user's app, then runs one task at a time for its parent worker.

Started by :class:`chronoq.pool.process.ProcessPool` as ``python -m chronoq.pool.child
--app module:attribute``. It reads requests from stdin and answers on stdout (see
:mod:`chronoq.pool.protocol`); the handlers' own prints go to stderr, and stdin is
``/dev/null`` for them. Handlers run through :class:`chronoq.executors.PythonExecutor` with
:data:`chronoq.current_task` set, exactly as in the worker's own process; what they log and
print is captured (:mod:`chronoq.logcapture`) and sent to the worker over the reply pipe,
before the reply, as is their progress. The child ignores
SIGINT (Ctrl+C reaches the worker, which decides) and dies with its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

from chronoq import logcapture, tracing
from chronoq.config import Settings
from chronoq.executors import Executor, TaskFailed, current_task
from chronoq.pool import protocol

_PR_SET_PDEATHSIG = 1
#: the longest request line read (a payload the API accepted is far smaller)
_REQUEST_LIMIT = 1 << 30
#: replies and captured lines share the pipe; sync handlers write from their threads
_write_lock = threading.Lock()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chronoq.pool.child")
    parser.add_argument("--app", default=None, help="module:attribute of the chronoq.App")
    parser.add_argument("--demo", action="store_true", help="register the demo handlers")
    parser.add_argument("--result-limit", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    requests, replies = _take_protocol_fds()
    executors = _load_executors(args.app, args.demo)
    from chronoq.logs import setup_logging

    setup_logging(Settings().log_level)  # the level the worker logs at: what is captured
    logcapture.install()
    tracing.setup()  # the worker's OTEL_* environment: the handlers' spans are exported here
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(executors, requests, replies, args.result_limit))


async def _serve(
    executors: dict[str, Executor], requests: BinaryIO, replies: int, limit: int
) -> None:
    """Answer requests until stdin closes, on one loop that stays up between tasks."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_REQUEST_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), requests)
    _write(replies, orjson.dumps({"ready": os.getpid(), "handlers": sorted(executors)}) + b"\n")
    while line := await reader.readline():
        _write(replies, await _run_one(executors, orjson.loads(line), limit, replies))


class _PipeJournal:
    """An attempt's journal in a child: each captured write goes to the worker at once
    (the worker caps and buffers; this stops sending a little past the cap); progress at
    most every :data:`PROGRESS_SECONDS`, the latest value always before the reply."""

    PROGRESS_SECONDS = 0.1

    def __init__(self, fd: int, task_id: str) -> None:
        self.fd = fd
        self.task_id = task_id
        self.sent = 0
        self._progress_at = 0.0
        self._pending: tuple[float, str | None] | None = None

    def write(self, stream: str, text: str) -> None:
        if self.sent > logcapture.LIMIT + logcapture.LINE_LIMIT:
            return
        self.sent += len(text)
        _write(self.fd, protocol.log_line(self.task_id, stream, text))

    def progress(self, value: float, message: str | None) -> None:
        now = time.monotonic()
        if now - self._progress_at < self.PROGRESS_SECONDS:
            self._pending = (value, message)
            return
        self._progress_at, self._pending = now, None
        _write(self.fd, protocol.progress_line(self.task_id, value, message))

    def flush(self) -> None:
        """The attempt ended: the progress held back goes before the reply."""
        pending, self._pending = self._pending, None
        if pending is not None:
            _write(self.fd, protocol.progress_line(self.task_id, *pending))


async def _run_one(
    executors: dict[str, Executor], message: dict[str, Any], limit: int, replies: int
) -> bytes:
    task_id = message["id"]
    executor = executors.get(message["name"])
    if executor is None:
        return protocol.failure_line(
            task_id,
            TaskFailed(
                f"no handler named {message['name']!r} in the worker's child process {os.getpid()}"
            ),
            with_traceback=False,
        )
    journal = _PipeJournal(replies, task_id)
    token = current_task.set(protocol.context_of(message, journal))
    try:
        with tracing.child_span(message.get("traceparent")):
            result = await executor.run(message["payload"])
    except Exception as exc:
        return protocol.failure_line(task_id, exc, with_traceback=not isinstance(exc, TaskFailed))
    finally:
        current_task.reset(token)
        journal.flush()
    return protocol.success(task_id, result, limit)


def _take_protocol_fds() -> tuple[BinaryIO, int]:
    """Keep stdin/stdout for the protocol; give handlers /dev/null and stderr instead."""
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return requests, replies


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with _write_lock:
        while view:
            view = view[os.write(fd, view) :]


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the worker dies, even in the middle of a handler."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _load_executors(app_path: str | None, demo: bool) -> dict[str, Executor]:
    from chronoq.cli import load_app

    settings = Settings()
    if app_path is not None:
        settings = settings.model_copy(update={"app": app_path})
    app = load_app(settings)
    if demo:
        from chronoq import demo as demo_module

        demo_module.register(app)
    return app.executors()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("CHRONOQ_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
