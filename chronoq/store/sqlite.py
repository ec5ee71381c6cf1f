"""SQLite store: the embedded default. One connection, WAL journal, writes serialised."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from chronoq.events import EventBus
from chronoq.notify import Hub
from chronoq.store.base import Row, Store


def _sql(text: str) -> str:
    """Our queries use ``$1``; SQLite spells numbered parameters ``?1``."""
    return text.replace("$", "?")


class _SQLiteConn:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = list(await self._db.execute_fetchall(_sql(sql), args))  # type: ignore[arg-type]
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db.execute(_sql(sql), args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._db.executemany(_sql(sql), rows)


class SQLiteStore(Store):
    """Tasks in a local SQLite file (``sqlite:///path``; ``sqlite:///:memory:`` for tests)."""

    dialect = "sqlite"
    data_errors = (sqlite3.DataError, sqlite3.IntegrityError, OverflowError)
    outage_errors = (*Store.outage_errors, sqlite3.OperationalError)  # locked, disk I/O

    def __init__(
        self, path: str | Path, hub: Hub | None = None, events: EventBus | None = None
    ) -> None:
        super().__init__(hub, events)
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def sibling(self) -> SQLiteStore | None:
        return None if self.path == ":memory:" else SQLiteStore(self.path)

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connecting = aiosqlite.connect(self.path, isolation_level=None)
        try:
            db = await connecting
        except sqlite3.Error:
            # aiosqlite stops its thread without waiting for it; a loop closed before the
            # thread reports back prints a traceback from that thread
            await asyncio.to_thread(connecting._thread.join, 1.0)
            raise
        db.row_factory = sqlite3.Row
        try:
            for pragma in (
                "journal_mode = WAL",
                "synchronous = NORMAL",
                "foreign_keys = ON",
                "busy_timeout = 10000",
            ):
                await db.execute(f"PRAGMA {pragma}")
        except BaseException:
            await db.close()  # e.g. "file is not a database": its thread would keep us alive
            raise
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[_SQLiteConn]:
        async with self._lock:
            yield _SQLiteConn(self._require())

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[_SQLiteConn]:
        async with self._lock:
            db = self._require()
            if db.in_transaction:  # left open by a cancelled caller: nobody else holds it
                await db.execute("ROLLBACK")
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteConn(db)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    def in_list(self, placeholder: str) -> str:
        return f"IN (SELECT value FROM json_each({placeholder}))"

    def list_param(self, values: Iterable[str]) -> Any:
        return orjson.dumps(list(values)).decode()

    async def applied_migrations(self) -> set[int]:
        async with self.conn() as c:
            await c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            rows = await c.fetch("SELECT version FROM schema_migrations")
        return {r["version"] for r in rows}

    async def apply_migration(self, version: int, name: str, sql: str) -> None:
        async with self._lock:
            db = self._require()
            await db.execute("BEGIN IMMEDIATE")
            try:
                done = await db.execute_fetchall(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                )
                if not list(done):
                    for statement in _statements(sql):
                        await db.execute(statement)
                    await db.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration script into complete statements."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
