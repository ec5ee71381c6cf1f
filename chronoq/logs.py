"""Logging for chronoq processes: JSON lines for log collectors, a human format on a terminal.

``chronoq`` commands call :func:`setup_logging` once; the format follows the terminal unless
``CHRONOQ_LOG_FORMAT`` (``json``, ``text`` or ``auto``) says otherwise, so a process under
systemd, Docker or Kubernetes logs one JSON object per line with the record's ``extra``
fields (task_id, attempt, queue, worker...) as keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import click
import orjson

from chronoq import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else on a record came from ``extra=``
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, then the record's ``extra`` fields (task_id, attempt, queue, worker...),
    and ``exception``/``stack`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if tracing.tracer is not None:  # the current span's ids (chronoq.tracing)
            entry.update(tracing.log_ids())
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson refuses outright (e.g. integers past 64 bits)
            return json.dumps(entry, default=repr, separators=(",", ":"))


def log_format(stream: TextIO) -> str:
    """``json`` or ``text``: ``CHRONOQ_LOG_FORMAT`` if set, else JSON unless ``stream`` is a
    terminal. An unknown value is a usage error of the command."""
    chosen = os.environ.get("CHRONOQ_LOG_FORMAT", "").strip().lower()
    if chosen in ("json", "text"):
        return chosen
    if chosen not in ("", "auto"):
        raise click.UsageError(f"CHRONOQ_LOG_FORMAT={chosen!r}: use json, text or auto")
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def log_handler(stream: TextIO) -> logging.Handler:
    """A handler writing to ``stream`` in the format :func:`log_format` picks for it."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter() if log_format(stream) == "json" else logging.Formatter(TEXT_FORMAT)
    )
    return handler


def setup_logging(level: str) -> None:
    """Log to stderr: JSON lines when it is not a terminal (or ``CHRONOQ_LOG_FORMAT=json``),
    the human format otherwise (or ``CHRONOQ_LOG_FORMAT=text``)."""
    logging.basicConfig(level=level.upper(), handlers=[log_handler(sys.stderr)])
