"""How task SQL selects rows by status, queue, name and namespace. Retention's purge and
the bulk retry/cancel (:mod:`chronoq.store.bulk`) select with one :class:`TaskFilter`, so a
filter means the same thing to every action that takes one; :func:`page` builds the
``GET /v1/tasks`` pages. Both spell a status the way the list indexes need
(:data:`LISTED`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chronoq import lifecycle
from chronoq.states import Status

#: the list indexes' predicate (``tasks_by_status``, ``_by_queue``, ``_by_name``,
#: ``_by_namespace``; migration 0026): they leave out running tasks, so a claim enters two
#: indexes instead of six. Running tasks are few (one per busy slot) and read from
#: ``tasks_leases``. Queries repeat the predicate word for word: SQLite
#: matches it so, and a generic plan (the status a parameter) proves nothing from ``$1``.
LISTED = lifecycle.is_not(Status.RUNNING)
#: ``tasks_leases``' predicate: the running tasks the list indexes leave out
_RUNNING = lifecycle.is_(Status.RUNNING)


def page(
    dialect: str,
    status: Status | None,
    queue: str | None,
    name: str | None,
    schedule_id: str | None,
    namespace: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """A page of tasks, newest first, below the id ``cursor``: the SQL and its arguments.
    Without a status it merges the newest listed tasks (the list indexes) with the
    newest running ones (``tasks_leases``, a few per worker slot; SQLite, which has no
    statistics to tell it so, is told by name: it would walk the primary key below the
    cursor instead)."""
    sql, args = TaskFilter(status, queue, name, namespace).where(dialect)
    where = [] if sql == "TRUE" else [sql]
    for test, value in (("schedule_id =", schedule_id), ("id <", cursor)):
        if value is not None:
            args.append(value)
            where.append(f"{test} ${len(args)}")
    args.append(limit)
    order = f"ORDER BY id DESC LIMIT ${len(args)}"

    def part(tests: list[str], index: str = "") -> str:
        return f"SELECT * FROM tasks{index} WHERE {' AND '.join(tests)} {order}"

    leases = " INDEXED BY tasks_leases" if dialect == "sqlite" else ""
    if status is not None:  # the filter's status test names the index's predicate
        return part(where, leases if status is Status.RUNNING else ""), args
    listed, running = part([*where, LISTED]), part([*where, _RUNNING], leases)
    return (
        f"SELECT * FROM (SELECT * FROM ({listed}) AS listed UNION ALL "
        f"SELECT * FROM ({running}) AS running) AS page {order}"
    ), args


def _status_test(status: Status, placeholder: str) -> str:
    """SQL true of rows in ``status`` (the value in ``placeholder``), spelt so that a
    listed status walks the list indexes and running tasks ``tasks_leases``."""
    return f"status = {placeholder} AND {_RUNNING if status is Status.RUNNING else LISTED}"


#: SQL testing that column ``error`` contains a parameter (case-sensitive on both)
_CONTAINS = {"sqlite": "instr(error, {p}) > 0", "postgresql": "strpos(error, {p}) > 0"}


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Tasks of ``status`` (and ``queue``, handler ``name``, ``namespace``), created or
    last changed inside the given bounds (epoch seconds, exclusive), whose error contains
    ``error``. None leaves a field out."""

    status: Status | None = None
    queue: str | None = None
    name: str | None = None
    namespace: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    updated_after: float | None = None
    updated_before: float | None = None
    error: str | None = None

    def where(self, dialect: str, first: int = 1) -> tuple[str, list[Any]]:
        """The SQL condition (parameters from ``$first``) and its arguments; ``TRUE`` when
        nothing is filtered. ``dialect`` spells the error substring test."""
        tests = (
            (
                "status = {p}" if self.status is None else _status_test(self.status, "{p}"),
                None if self.status is None else self.status.value,
            ),
            ("queue = {p}", self.queue),
            ("updated_at < {p}", self.updated_before),
            ("updated_at > {p}", self.updated_after),
            ("name = {p}", self.name),
            ("namespace = {p}", self.namespace),
            ("created_at < {p}", self.created_before),
            ("created_at > {p}", self.created_after),
            (_CONTAINS[dialect], self.error),
        )
        parts: list[str] = []
        args: list[Any] = []
        for test, value in tests:
            if value is not None:
                args.append(value)
                parts.append(test.format(p=f"${first + len(args) - 1}"))
        return " AND ".join(parts) or "TRUE", args
