"""The task filter that bulk actions share: retention's purge and the bulk retry/cancel
(:mod:`chronoq.store.bulk`) select their rows with one :class:`TaskFilter`, so a filter
means the same thing to every action that takes one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chronoq.states import Status

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
            ("status = {p}", None if self.status is None else self.status.value),
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
