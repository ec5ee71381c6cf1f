"""Wrong submissions mypy must refuse (tests/test_handles.py counts the errors)."""

from __future__ import annotations

import chronoq

app = chronoq.App("sqlite:///unused.db")


@app.task("add")
def add(a: int, b: int = 0) -> int:
    return a + b


def wrong() -> None:
    add.delay(a="x")  # E: a str for an int
    add.delay(b=1)  # E: a missing argument
    add.delay(a=1, c=2)  # E: an unknown argument
    add.options(priority="high")  # E: a str for an int option
