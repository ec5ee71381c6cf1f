"""The lifecycle table is the only place task SQL gets its statuses from: no statement
elsewhere spells a task status or assigns one itself, so a transition the table does not
name cannot be written without this test failing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from chronoq import lifecycle
from chronoq.lifecycle import TABLE, TERMINAL, TRANSITIONS, InvalidTransition, Status

PACKAGE = Path(lifecycle.__file__).parent
STATUSES = "|".join(s.value for s in Status)
#: a task status written into SQL: compared with, or listed in an IN (...)
LITERAL = re.compile(rf"\bstatus\s*(=|<>|!=|IN\s*\()\s*'({STATUSES})'", re.IGNORECASE)
#: a status assigned in an UPDATE's SET list (``SET status = ...``, ``..., status = ...``)
ASSIGN = re.compile(r"(\bSET\s+|,\s*)(\w+\.)?status\s*=", re.IGNORECASE)
#: a string that is about the tasks table (the workers table has statuses of its own)
TASKS = re.compile(r"\btasks\b", re.IGNORECASE)


def sql_strings(source: str) -> list[tuple[int, str]]:
    """Every string literal of a module, f-strings with ``{}`` where they interpolate."""
    found = []
    parts: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(part) for part in node.values)
            text = "".join(
                str(part.value) if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            found.append((node.lineno, str(text)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [] if id(node) in parts else [(node.lineno, node.value)]
    return found


def violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    found = []
    for line, text in sql_strings(path.read_text()):
        if not TASKS.search(text):
            continue
        for pattern in (LITERAL, ASSIGN):
            if match := pattern.search(text):
                found.append(f"{path.relative_to(root)}:{line}: {match.group(0)!r}")
    return found


def test_the_checker_catches_a_status_spelled_in_task_sql(tmp_path: Path) -> None:
    bad = tmp_path / "chronoq" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "A = \"UPDATE tasks SET status = 'queued' WHERE id = $1\"\n"
        'B = f"UPDATE tasks t SET attempts = 0, status = {x} WHERE t.id = $1"\n'
        "C = \"DELETE FROM tasks WHERE status IN ('dead', 'cancelled')\"\n"
        "D = \"UPDATE workers SET status = 'dead' WHERE status = 'alive'\"\n"
    )
    assert [v.split(": ", 1)[0] for v in violations(bad, tmp_path)] == [
        "chronoq/bad.py:1",
        "chronoq/bad.py:1",
        "chronoq/bad.py:2",
        "chronoq/bad.py:3",
    ]


def test_every_status_in_task_sql_comes_from_the_lifecycle_table() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != Path(lifecycle.__file__):
            found += violations(path)
    assert not found, "task SQL must take statuses from chronoq.lifecycle:\n" + "\n".join(found)


def test_migration_triggers_only_act_on_transitions_of_the_table() -> None:
    """The PostgreSQL triggers react to status changes: each change they name is one a
    transition makes (the hand-off insert opens an attempt: :data:`lifecycle.HAND_OFF`)."""
    inserted = {t for x in TABLE if not x.sources for t in x.targets}
    for path in sorted((PACKAGE / "store" / "migrations").glob("*.sql")):
        text = path.read_text()
        for new, old in re.findall(
            rf"NEW\.status = '({STATUSES})' AND TG_OP = 'UPDATE' AND OLD\.status = '({STATUSES})'",
            text,
        ):
            assert Status(old) in TRANSITIONS[Status(new)], (path.name, old, new)
        for new in re.findall(rf"NEW\.status = '({STATUSES})' AND TG_OP = 'INSERT'", text):
            assert Status(new) in inserted, (path.name, new)
    assert lifecycle.HAND_OFF.targets == {Status.RUNNING}


def test_the_table_covers_every_status_and_its_docstring() -> None:
    reached = {t for x in TABLE for t in x.targets}
    assert reached == set(Status)
    assert set(lifecycle.PURGE.sources) == TERMINAL
    assert Status.RUNNING in TRANSITIONS[Status.QUEUED]  # release
    doc = lifecycle.__doc__ or ""
    assert [x.name for x in TABLE] == re.findall(r"^([a-z_]+) {2,}", doc, re.MULTILINE)[1:]


def test_where_and_to_spell_sql_from_the_table() -> None:
    assert lifecycle.PROMOTE.where() == "status IN ('scheduled', 'failed')"  # tasks_waiting
    assert lifecycle.CLAIM.where("t.status") == "t.status = 'queued'"  # tasks_ready
    assert lifecycle.PURGE.where() == "status IN ('cancelled', 'dead', 'succeeded')"
    assert lifecycle.RELEASE.to() == "status = 'queued'"
    with pytest.raises(ValueError):
        lifecycle.FINISH.to()  # three targets: name one
    with pytest.raises(ValueError):
        lifecycle.FINISH.to(Status.QUEUED)
    with pytest.raises(InvalidTransition):
        lifecycle.RETRY.check("t1", Status.SUCCEEDED)
    lifecycle.CANCEL.check("t1", Status.RUNNING)
