"""Submission warnings: a task that no live worker of its queue can run is accepted (the
right worker may start later) but the answer says so, in the task's ``warnings``.

The check reads the worker registry at most once per :data:`TTL` seconds per API process
(:class:`chronoq.store.workers.ServedCache`): on the submit path it is a set lookup.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

from chronoq.app import App
from chronoq.models import Task
from chronoq.states import TERMINAL
from chronoq.store.workers import ServedCache

log = logging.getLogger("chronoq.api")

#: seconds a read of the worker registry is reused
TTL = 2.0

_caches: weakref.WeakKeyDictionary[App, ServedCache] = weakref.WeakKeyDictionary()


async def add_warnings(app: App, tasks: Sequence[Task]) -> None:
    """Set ``warnings`` on each unfinished task that no live worker of its queue can run
    (live: heard from within the lease time). Advisory: a registry that cannot be read
    adds none."""
    if all(task.status in TERMINAL for task in tasks):
        return
    cache = _caches.get(app)
    if cache is None:
        cache = _caches[app] = ServedCache(app.settings.lease_seconds, TTL)
    try:
        served = await cache.get(app.store.workers)
    except Exception as exc:
        log.warning("could not read the worker registry for submission warnings: %s", exc)
        return
    for task in tasks:
        if task.status not in TERMINAL:
            warning = served.warning(task.queue, task.name)
            if warning is not None:
                task.warnings = [warning]
