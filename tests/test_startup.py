"""What a chronoq process says when it starts, or cannot: real processes, real databases."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_URL
from tests.processes import Proc, cli, free_port, wait_ready

PG_BASE = PG_URL.rsplit("/", 1)[0]


@pytest.mark.parametrize(
    ("url", "where", "why"),
    [
        (
            f"postgresql://postgres@127.0.0.1:{free_port()}/test",
            "127.0.0.1:",
            "ConnectionRefusedError",
        ),
        (
            "postgresql://postgres@no-such-host.invalid/test",
            "no-such-host.invalid:5432/test",
            "gaierror",
        ),
        (f"{PG_BASE}/chronoq_no_such_db", "/chronoq_no_such_db", "does not exist"),
        (
            "mysql://root:hunter2@db.example/app",
            "mysql://root:***@db.example/app",
            "unsupported database URL",
        ),
    ],
)
@pytest.mark.parametrize("command", [["api"], ["db", "upgrade"], ["keys", "ls"]])
def test_a_bad_database_url_is_one_line_naming_where_and_why(
    command: list[str], url: str, where: str, why: str
) -> None:
    result = cli(*command, "--database-url", url, env={"CHRONOQ_LOG_FORMAT": "text"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot open the database at "), lines
    assert where in lines[0] and why in lines[0], lines
    assert "hunter2" not in result.stderr


def test_api_says_where_it_listens_and_where_the_dashboard_is(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Proc(
        ["api", "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'api.db'}"],
        {"CHRONOQ_LOG_FORMAT": "text"},
        tmp_path / "api.log",
    )
    procs.append(api)
    wait_ready(url, api)
    assert api.terminate() == 0
    assert f"API listening on {url} (dashboard {url}/ui, docs {url}/docs)" in api.output()


def test_a_file_that_is_not_a_database_is_one_line_and_exits(tmp_path: Path) -> None:
    """It used to leave aiosqlite's thread running: the process never exited."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 100)
    result = cli("api", "--database-url", f"sqlite:///{junk}", env={"CHRONOQ_LOG_FORMAT": "text"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot open the database at {junk}: DatabaseError: file is not a database"
    ]


@pytest.mark.parametrize(
    ("variable", "flags", "keys_on"),
    [
        ("true", [], True),
        ("false", [], False),
        (None, [], False),
        ("true", ["--no-auth"], False),
    ],
)
def test_dev_honours_chronoq_auth_unless_a_flag_says_otherwise(
    tmp_path: Path, procs: list[Proc], variable: str | None, flags: list[str], keys_on: bool
) -> None:
    """What the README promises: keys off by default, CHRONOQ_AUTH when set, flags win."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"CHRONOQ_AUTH": variable} if variable is not None else {}
    dev = Proc(
        ["dev", "--port", str(port), *flags, "--database-url", f"sqlite:///{tmp_path / 'dev.db'}"],
        env,
        tmp_path / "dev.log",
    )
    procs.append(dev)
    wait_ready(url, dev)
    status = httpx.get(f"{url}/v1/tasks", timeout=5).status_code
    assert status == (401 if keys_on else 200), dev.output()
    assert dev.terminate() == 0
