"""Storage back-ends. :func:`create_store` picks one from a database URL."""

from __future__ import annotations

from chronoq.events import EventBus
from chronoq.notify import Hub
from chronoq.store.base import Completion, NotFound, Store, TaskRecord, opened


def create_store(url: str, hub: Hub | None = None, events: EventBus | None = None) -> Store:
    """A store for ``sqlite:///path`` or ``postgresql://…`` (not yet opened)."""
    if url.startswith("sqlite://"):
        from chronoq.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path
        return SQLiteStore(path or "chronoq.db", hub, events)
    if url.startswith(("postgresql://", "postgres://")):
        from chronoq.store.postgres import PostgresStore

        return PostgresStore(url, hub, events)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")


__all__ = ["Completion", "NotFound", "Store", "TaskRecord", "create_store", "opened"]
