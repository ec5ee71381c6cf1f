"""Time-ordered task ids (UUIDv7 layout), so the newest tasks sort last and pages are stable.

Within one process ids are strictly increasing: the 12 ``rand_a`` bits hold the sub-millisecond
time (RFC 9562, method 3) and a counter guards against equal or backward clock readings.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, 12 bits of sub-millisecond time, random bits."""
    global _last
    ms, sub_ms = divmod(time.time_ns(), 1_000_000)
    stamp = (ms << 12) | (sub_ms * 4096 // 1_000_000)
    with _lock:
        if stamp <= _last:
            stamp = _last + 1
        _last = stamp
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = ((stamp >> 12) << 80) | (0x7 << 76) | ((stamp & 0xFFF) << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def is_id(text: str) -> bool:
    """True when ``text`` looks like a task id (lower-case canonical UUID)."""
    return bool(_ID.match(text))
