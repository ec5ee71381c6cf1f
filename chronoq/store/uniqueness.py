"""Unique jobs: the key a ``unique_for`` submission holds, and letting go of lapsed keys.

The guarantee is the partial unique index of migration 0018, not a read before the insert:
two submissions racing in different processes cannot both hold a key. A key is held while
its task waits or runs and its window lasts; a finished task gives it back by leaving the
index's statuses, a task whose window ended gives it back when the next submission finds
it (:data:`RELEASE_LAPSED`).

Debounce reuses the key: a debounced task holds ``debounce:<name or key>`` until its run
time, and an equal submission meanwhile replaces its payload and run time
(:data:`DEBOUNCE`) rather than returning it unchanged.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from chronoq import lifecycle
from chronoq.lifecycle import TERMINAL, Status

#: a submission's key when it gives ``unique_for`` without ``unique_key``: its handler's
#: name and the SHA-256 of its payload as canonical JSON (keys sorted), so equal payloads
#: written in any key order are one job
DEFAULT_PREFIX = "auto:"

#: what a debounced submission's key starts with: its conflicts replace the holder
DEBOUNCE_PREFIX = "debounce:"

#: SQL true of the tasks that hold their key: the statuses of migration 0018's index
HOLDING = "status IN ({})".format(", ".join(f"'{s.value}'" for s in Status if s not in TERMINAL))

#: let the lapsed holder of a key go (``$1`` namespace, ``$2`` the key, ``$3`` now): its
#: task runs on, unguarded, and the submission that found it inserts a new task
RELEASE_LAPSED = (
    "UPDATE tasks SET unique_key = NULL WHERE namespace = $1 AND unique_key = $2 "
    "AND unique_until <= $3"
)


#: a debounced submission replacing the task holding its key (``$1`` its id, ``$2`` the
#: key, ``$3`` payload, ``$4`` run_at, ``$5`` now), while that task still waits for its run
#: time: as one UPDATE, so a scheduler promoting it meanwhile makes it match nothing
DEBOUNCE = (
    "UPDATE tasks SET payload = $3, run_at = $4, unique_until = $4, updated_at = $5 "
    f"WHERE id = $1 AND unique_key = $2 AND {lifecycle.is_(Status.SCHEDULED)} RETURNING *"
)
#: a holder that a debounced submission could not replace (it came due) lets its key go
LET_GO = "UPDATE tasks SET unique_key = NULL WHERE id = $1 AND unique_key = $2"


def debounced(key: str | None) -> bool:
    """Whether a task holding ``key`` was submitted with ``debounce``."""
    return key is not None and key.startswith(DEBOUNCE_PREFIX)


def debounce_key(name: str, key: str | None) -> str:
    """The key a debounced submission of handler ``name`` holds: the caller's ``key``,
    else the name (the latest payload wins, so it is no part of the key)."""
    return f"{DEBOUNCE_PREFIX}{name if key is None else key}"


def unique_key(name: str, payload: Any, key: str | None) -> str:
    """The key a submission of handler ``name`` holds: the caller's ``key``, else one
    derived from ``name`` and ``payload`` (:data:`DEFAULT_PREFIX`)."""
    if key is not None:
        return key
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return f"{DEFAULT_PREFIX}{name}:{hashlib.sha256(canonical).hexdigest()}"
