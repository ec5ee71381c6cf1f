"""Task logs and progress rows (migration 0022): written by the worker's log buffer
(:mod:`chronoq.worker.journals`) in one transaction per flush, never by the completion
statement; read by ``GET /v1/tasks/{id}/logs``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chronoq.events import LogEvent, ProgressEvent
from chronoq.store.records import dumps, loads, storable_text

if TYPE_CHECKING:
    from chronoq.store.base import Store


@dataclass(frozen=True, slots=True)
class Chunk:
    """Lines of one attempt, ``seq`` counting the attempt's chunks from 1."""

    task_id: str
    attempt: int
    seq: int
    at: float
    lines: Sequence[tuple[float, str, str]]


@dataclass(frozen=True, slots=True)
class Step:
    """The latest progress of an attempt."""

    task_id: str
    attempt: int
    progress: float
    message: str | None
    at: float


#: how the inserts lock the task row they depend on, per dialect (SQLite: its foreign keys)
_KEY_SHARE = {"postgresql": " FOR KEY SHARE", "sqlite": ""}


@dataclass(frozen=True, slots=True)
class LogLine:
    attempt: int
    seq: int
    at: float
    stream: str
    text: str


async def write(
    store: Store,
    chunks: Sequence[Chunk],
    steps: Sequence[Step],
    events: Sequence[ProgressEvent] = (),
    logs: Sequence[LogEvent] = (),
) -> None:
    """Store ``chunks`` and ``steps`` (a task whose row is gone is skipped), then announce
    the progress ``events`` and the chunks' ``logs`` events.

    On PostgreSQL the task's row is locked ``FOR KEY SHARE`` by the insert, so a DELETE of
    the task either waits for this transaction (and its trigger then deletes these rows)
    or has committed (and nothing is inserted): migration 0025 replaced the foreign keys,
    whose check took that lock, with a statement-level trigger."""
    there = f"EXISTS (SELECT 1 FROM tasks WHERE id = $1{_KEY_SHARE[store.dialect]})"
    async with store.tx() as c:
        if chunks:
            await c.executemany(
                "INSERT INTO task_logs (task_id, attempt, seq, at, lines) "
                f"SELECT $1, $2, $3, $4, $5 WHERE {there} "
                "ON CONFLICT DO NOTHING",
                [
                    (
                        k.task_id,
                        k.attempt,
                        k.seq,
                        k.at,
                        storable_text(dumps([[at, s, t] for at, s, t in k.lines])),
                    )
                    for k in chunks
                ],
            )
        if steps:
            await c.executemany(
                "INSERT INTO task_progress (task_id, attempt, progress, message, at) "
                f"SELECT $1, $2, $3, $4, $5 WHERE {there} "
                "ON CONFLICT (task_id) DO UPDATE SET attempt = excluded.attempt, "
                "progress = excluded.progress, message = excluded.message, at = excluded.at "
                "WHERE task_progress.attempt <= excluded.attempt",
                [
                    (
                        s.task_id,
                        s.attempt,
                        s.progress,
                        None if s.message is None else storable_text(s.message),
                        s.at,
                    )
                    for s in steps
                ],
            )
    store.announce.progressed(events)
    store.announce.logged(logs)


async def lines(
    store: Store, task_id: str, attempt: int | None = None, after: tuple[int, int] = (0, 0)
) -> list[LogLine]:
    """The task's captured lines, oldest first: of one ``attempt`` or all, in chunks after
    ``after`` (attempt, seq)."""
    where = "task_id = $1 AND (attempt > $2 OR (attempt = $2 AND seq > $3))"
    args: list[Any] = [task_id, after[0], after[1]]
    if attempt is not None:
        where += " AND attempt = $4"
        args.append(attempt)
    async with store.conn() as c:
        rows = await c.fetch(
            f"SELECT attempt, seq, lines FROM task_logs WHERE {where} ORDER BY attempt, seq",
            *args,
        )
    return [
        LogLine(r["attempt"], r["seq"], float(at), stream, text)
        for r in rows
        for at, stream, text in loads(r["lines"])
    ]


async def progress(store: Store, task_id: str) -> Step | None:
    async with store.conn() as c:
        rows = await c.fetch("SELECT * FROM task_progress WHERE task_id = $1", task_id)
    if not rows:
        return None
    r = rows[0]
    return Step(r["task_id"], r["attempt"], float(r["progress"]), r["message"], float(r["at"]))
