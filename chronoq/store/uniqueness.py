"""Unique jobs: the key a ``unique_for`` submission holds, and letting go of lapsed keys.

The guarantee is the partial unique index of migration 0018, not a read before the insert:
two submissions racing in different processes cannot both hold a key. A key is held while
its task waits or runs and its window lasts; a finished task gives it back by leaving the
index's statuses, a task whose window ended gives it back when the next submission finds
it (:data:`RELEASE_LAPSED`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from chronoq.lifecycle import TERMINAL, Status

#: a submission's key when it gives ``unique_for`` without ``unique_key``: its handler's
#: name and the SHA-256 of its payload as canonical JSON (keys sorted), so equal payloads
#: written in any key order are one job
DEFAULT_PREFIX = "auto:"

#: SQL true of the tasks that hold their key: the statuses of migration 0018's index
HOLDING = "status IN ({})".format(", ".join(f"'{s.value}'" for s in Status if s not in TERMINAL))

#: let the lapsed holders of keys go (``$1`` namespace, ``$2`` the keys, ``$3`` now): their
#: tasks run on, unguarded, and the submission that found them inserts a new task
RELEASE_LAPSED = (
    "UPDATE tasks SET unique_key = NULL WHERE namespace = $1 AND unique_key {keys} "
    "AND unique_until <= $3"
)


def unique_key(name: str, payload: Any, key: str | None) -> str:
    """The key a submission of handler ``name`` holds: the caller's ``key``, else one
    derived from ``name`` and ``payload`` (:data:`DEFAULT_PREFIX`)."""
    if key is not None:
        return key
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return f"{DEFAULT_PREFIX}{name}:{hashlib.sha256(canonical).hexdigest()}"
