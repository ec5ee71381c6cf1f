"""Capturing what a handler logs and prints during an attempt.

Capture follows :data:`chronoq.current_task`, which the worker sets for each attempt (and
which ``PythonExecutor`` copies into the thread a sync handler runs in), so concurrent
attempts on one event loop, or in one thread pool, never mix their lines:

- a handler on the root logger takes each record emitted while an attempt's context is
  current (at the level the process logs, ``CHRONOQ_LOG_LEVEL``; chronoq's own loggers are
  left out) and hands it, formatted, to the attempt's :class:`~chronoq.executors.base.Journal`;
- ``sys.stdout`` and ``sys.stderr`` are wrapped: a write made in an attempt's context goes to
  its journal as well as to the real stream (output keeps going where it went before).

Outside an attempt both do nothing but pass through. In a process-pool child the journal
is the pipe to the worker (:mod:`chronoq.pool.child`); in the worker it is the attempt's
:class:`chronoq.worker.journals.AttemptLog`, which caps and buffers the lines. Threads a
handler starts itself do not inherit its context: run them with
``contextvars.copy_context().run`` to capture them too.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import TextIO

from chronoq.executors.base import current_task

#: captured bytes kept per attempt; past it the log says it was truncated
LIMIT = 64 * 1024
#: the longest single line kept (longer ones are cut)
LINE_LIMIT = 8 * 1024

FORMAT = "%(levelname)s %(name)s: %(message)s"


class CaptureHandler(logging.Handler):
    """Hands records emitted inside an attempt to the attempt's journal."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        if root.handlers == [self] and record.levelno >= logging.WARNING:
            _last_resort(record)  # logging is not configured: what Python would print
        name = record.name
        if name == "chronoq" or name.startswith("chronoq."):
            return
        context = current_task.get(None)
        if context is None or context.journal is None:
            return
        try:
            text = self.format(record)
        except Exception:  # a bad format string: the handler's problem, not the worker's
            return
        context.journal.write("log", text)


def _last_resort(record: logging.LogRecord) -> None:
    """Write ``record`` as :data:`logging.lastResort` would, which no longer runs now that
    the root logger has a handler (this one), to the real stderr."""
    stream = sys.stderr.original if isinstance(sys.stderr, Redirect) else sys.stderr
    try:
        stream.write(record.getMessage() + "\n")
    except Exception:
        return


class Redirect(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while capture is on: writes in an attempt's context
    also go to its journal."""

    def __init__(self, stream: str, original: TextIO) -> None:
        self.stream = stream
        self.original = original

    def write(self, text: str) -> int:
        context = current_task.get(None)
        if (
            context is not None
            and context.journal is not None
            and text
            # a logging handler writing here (set up after capture began): the record is
            # captured already, by CaptureHandler
            and sys._getframe(1).f_globals.get("__name__") != "logging"
        ):
            context.journal.write(self.stream, text)
        return self.original.write(text)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


_lock = threading.Lock()
_users = 0
_handler: CaptureHandler | None = None


def install() -> None:
    """Turn capture on (idempotent; each call needs an :func:`uninstall`)."""
    global _users, _handler
    with _lock:
        _users += 1
        if _handler is None:
            _handler = CaptureHandler()
            logging.getLogger().addHandler(_handler)
        if not isinstance(sys.stdout, Redirect):
            sys.stdout = Redirect("stdout", sys.stdout)
        if not isinstance(sys.stderr, Redirect):
            sys.stderr = Redirect("stderr", sys.stderr)


def uninstall() -> None:
    """The last user gone: the streams and the root logger are as they were."""
    global _users, _handler
    with _lock:
        _users = max(_users - 1, 0)
        if _users:
            return
        if _handler is not None:
            logging.getLogger().removeHandler(_handler)
            _handler = None
        if isinstance(sys.stdout, Redirect):
            sys.stdout = sys.stdout.original
        if isinstance(sys.stderr, Redirect):
            sys.stderr = sys.stderr.original
