"""The connector: how a store reaches its database, and nothing about what it stores.

:class:`Connector` is what every query module of the store builds on: open and close,
a connection (``conn``) and a write transaction (``tx``), how the dialect spells a list
parameter and a batch of new rows, the schema migrations, and the :class:`Announcer` that
tells this process about committed changes. The SQLite and PostgreSQL stores implement
its abstract methods. The task queries in ``base.py`` build on it; every other part of the
store is a :class:`Repository` object (``store.keys``, ``store.leases``, ``store.pauses``,
``store.workers``, ``store.schedules``, ``store.limits``) that is given the connector and
reaches the database only through it.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, Self

from chronoq.events import EventBus
from chronoq.notify import Hub
from chronoq.store.announce import Announcer
from chronoq.store.records import TASK_COLUMNS, NewTask

_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgresql))?\.sql$")


class Connector(abc.ABC):
    """Connections, transactions, dialect spellings, schema and announcements."""

    dialect: str
    #: appended to sub-selects that pick rows to update, so competing processes skip each other
    skip_locked: str = ""
    #: appended to a single-row SELECT inside a transaction to lock the row
    lock_row: str = ""
    #: errors the database raises for a bad value in one row (not for an outage): a group
    #: commit that hits one writes its rows one by one, so only the bad one fails
    data_errors: tuple[type[Exception], ...] = ()
    #: errors that mean the database cannot be reached or cannot take writes right now (a
    #: write that fails with one is tried again later, unchanged); any other failed write
    #: is taken for a refusal of what was written
    outage_errors: tuple[type[Exception], ...] = (OSError, TimeoutError)

    def __init__(self, hub: Hub | None = None, events: EventBus | None = None) -> None:
        #: the wake-ups and events of committed changes (its hub and bus are this store's)
        self.announce = Announcer(hub or Hub(), events or EventBus())

    # -- connection plumbing (dialects) ------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def conn(self) -> Any:
        """``async with store.conn() as c``: a connection in autocommit mode."""

    @abc.abstractmethod
    def tx(self) -> Any:
        """``async with store.tx() as c``: a connection inside a write transaction."""

    @abc.abstractmethod
    def in_list(self, placeholder: str) -> str:
        """SQL testing a column against a list parameter: ``IN (...)`` / ``= ANY(...)``."""

    @abc.abstractmethod
    def list_param(self, values: Iterable[str]) -> Any:
        """A Python list of strings in the form :meth:`in_list` expects."""

    def rows_source(self, tasks: Sequence[NewTask]) -> tuple[str, list[Any]]:
        """SQL and parameters giving ``tasks`` to an INSERT: a multi-row VALUES list."""
        width = len(TASK_COLUMNS)
        values = ", ".join(
            "(" + ", ".join(f"${i * width + j + 1}" for j in range(width)) + ")"
            for i in range(len(tasks))
        )
        return f"VALUES {values}", [value for task in tasks for value in task.values()]

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> None:
        async with self.conn() as c:
            await c.fetch("SELECT 1")

    # -- announcements -----------------------------------------------------------------------
    @property
    def hub(self) -> Hub:
        """In-process wake-ups: what this store's writes wake, and what its callers wait on."""
        return self.announce.hub

    @hub.setter
    def hub(self, hub: Hub) -> None:
        self.announce.hub = hub

    @property
    def events(self) -> EventBus:
        """Task state changes, for local subscribers (and the Redis bridge)."""
        return self.announce.events

    @events.setter
    def events(self, events: EventBus) -> None:
        self.announce.events = events

    def inserted(self, tasks: Sequence[NewTask]) -> None:
        """Tell this process's scheduler or workers, and event listeners, about tasks just
        inserted (:meth:`Announcer.created`)."""
        self.announce.created(tasks)

    # -- schema ------------------------------------------------------------------------------
    def migrations(self) -> list[tuple[int, str, str]]:
        """(version, name, sql) of every migration for this dialect, oldest first."""
        found: dict[int, tuple[int, str, str]] = {}
        for entry in resources.files("chronoq.store.migrations").iterdir():
            match = _MIGRATION.match(entry.name)
            if not match or match.group(3) not in (None, self.dialect):
                continue
            version = int(match.group(1))
            found[version] = (version, match.group(2), entry.read_text())
        return [found[v] for v in sorted(found)]

    @abc.abstractmethod
    async def applied_migrations(self) -> set[int]: ...

    @abc.abstractmethod
    async def apply_migration(self, version: int, name: str, sql: str) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied now."""
        done = await self.applied_migrations()
        applied = []
        for version, name, sql in self.migrations():
            if version not in done:
                await self.apply_migration(version, name, sql)
                applied.append(version)
        return applied


class Repository:
    """One part of the store's queries (keys, leases, pauses, workers), over the
    connector it is given: its connections, transactions, dialect spellings and
    announcements. A dialect subclasses one to say how a query runs, never which."""

    def __init__(self, db: Connector) -> None:
        self.db = db
