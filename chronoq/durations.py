"""Durations and points in time as people type them: ``90``, ``30s``, ``1h30m``, ``7d``,
or an ISO 8601 time. Shared by the CLI, the API and the retention settings."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``1h30m``, ``2d`` → seconds; ValueError names the text."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration; try 30s, 5m, 1h30m or 2d") from None
        return sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{text!r} is not a duration; give a number of seconds >= 0")
    return seconds


def parse_instant(text: str, now: float) -> float:
    """Epoch seconds for an ISO 8601 time (UTC unless it says otherwise) or for a duration
    meaning "that long before ``now``" (``7d``)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2030-01-01T00:00:00Z) nor a duration (7d, 12h)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, ValueError):  # beyond what a timestamp can say
        raise ValueError(f"{text!r} is out of range") from None
