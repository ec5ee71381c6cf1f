"""``chronoq.shell`` and the environment: a payload cannot make an allow-listed script run
other code through variables, and a child never sees the worker's own environment."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from chronoq.executors import ShellExecutor, TaskFailed
from chronoq.executors.shell import dangerous_env_name, parse_env_allow
from tests.conftest import Harness
from tests.processes import Proc, cli, free_port, wait_ready, wait_status

ENV = shutil.which("env", path="/usr/bin:/bin")
#: what every child gets from chronoq: the worker's PATH and HOME, and LANG
BASE = {"PATH", "LANG", *(["HOME"] if os.environ.get("HOME") else [])}


def script(directory: Path, name: str, text: str) -> str:
    """An executable file ``name`` in ``directory``; its absolute path."""
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def hostile_envs(marker: Path) -> list[dict[str, str]]:
    """Variables that make bash or Python run ``touch marker`` before the script's code."""
    touch = f"touch {marker}"
    return [
        {"BASH_ENV": f"$({touch})"},
        {"BASH_FUNC_echo%%": f"() {{ {touch}; }}"},
        {"PYTHONWARNINGS": "all:0:antigravity.x:0:0", "BROWSER": f"{touch} %s"},
        {"ENV": f"$({touch})", "SHELLOPTS": "xtrace", "PS4": f"$({touch})"},
        {"LD_PRELOAD": str(marker)},
    ]


@pytest.fixture
def jobs(tmp_path: Path) -> dict[str, str]:
    """A bash script and a Python script, both printing a greeting."""
    return {
        "bash": script(tmp_path, "job.sh", '#!/bin/bash\necho "hi ${GREETING-}"\n'),
        "python": script(
            tmp_path,
            "job.py",
            f"#!{sys.executable}\nimport os\nprint('hi', os.environ.get('GREETING', ''))\n",
        ),
    }


def env_names(stdout: str) -> set[str]:
    return {line.split("=", 1)[0] for line in stdout.splitlines() if "=" in line}


async def test_payload_env_cannot_run_code(tmp_path: Path, jobs: dict[str, str]) -> None:
    marker = tmp_path / "marker"
    executor = ShellExecutor(jobs.values(), env_allow=["GREETING"])
    for job in jobs.values():
        for env in hostile_envs(marker):
            with pytest.raises(
                TaskFailed,
                match=r"payload env sets .*which this worker does "
                r"not allow.*--shell-env-allow",
            ) as failed:
                await executor.run({"command": job, "env": {**env, "GREETING": "x"}})
            assert all(name in str(failed.value) for name in env)
            assert "GREETING" not in str(failed.value).split("allowed:")[0]
    # the same scripts run without them: the refusal, not a broken script, kept them out
    for job in jobs.values():
        assert (await executor.run({"command": job}))["stdout"] == "hi \n"
    assert not marker.exists()


def test_dangerous_names_cannot_be_allow_listed(tmp_path: Path) -> None:
    for env in hostile_envs(tmp_path / "marker"):
        for name in env:
            assert dangerous_env_name(name), name
            with pytest.raises(ValueError, match=f"{name!r} may not be allowed"):
                ShellExecutor(["echo"], env_allow=[name])
    for name in [
        "PATH",
        "path",
        "HOME",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PERL5OPT",
        "RUBYOPT",
        "NODE_OPTIONS",
        "GIT_SSH_COMMAND",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "JAVA_TOOL_OPTIONS",
    ]:
        with pytest.raises(ValueError, match="may not be allowed"):
            parse_env_allow([name])
    for malformed in ["A=B", "1X", "A B", "X%%"]:
        with pytest.raises(ValueError, match="is not an environment variable name"):
            parse_env_allow([malformed])
    assert parse_env_allow([" GREETING", "REPORT_DATE ", ""]) == {"GREETING", "REPORT_DATE"}


async def test_child_gets_a_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ENV is not None
    monkeypatch.setenv("CHRONOQ_DATABASE_URL", "postgresql://chronoq:s3cret@db/prod")
    monkeypatch.setenv("WORKER_ONLY_SECRET", "s3cret")
    monkeypatch.setenv("GREETING", "from the worker")
    executor = ShellExecutor([ENV], env_allow=["GREETING", "LANG"])
    bare = await executor.run({"command": ENV})
    assert env_names(bare["stdout"]) == BASE
    assert "s3cret" not in bare["stdout"] and "LANG=C.UTF-8" in bare["stdout"]
    listed = await executor.run(
        {"command": ENV, "env": {"GREETING": "hello", "LANG": "en_US.UTF-8"}}
    )
    assert env_names(listed["stdout"]) == BASE | {"GREETING"}
    assert "GREETING=hello\n" in listed["stdout"] and "LANG=en_US.UTF-8" in listed["stdout"]


async def test_nul_bytes_are_refused(tmp_path: Path, jobs: dict[str, str]) -> None:
    executor = ShellExecutor(["echo"], env_allow=["GREETING"])
    cases: dict[str, dict[str, Any]] = {
        "args[1]": {"command": "echo", "args": ["ok", "a\0b"]},
        "command": {"command": "echo\0 rm"},
        "cwd": {"command": "echo", "cwd": f"{tmp_path}\0/etc"},
        "env['GREETING']": {"command": "echo", "env": {"GREETING": "a\0b"}},
    }
    for field, payload in cases.items():
        with pytest.raises(TaskFailed, match=re.escape(f"payload {field} contains a NUL")):
            await executor.run(payload)


async def test_through_the_api_and_a_worker(
    harness: Harness, tmp_path: Path, jobs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on both stores: refused variables fail the task with the fix named and
    run nothing; allowed ones reach the script; the worker's variables never do."""
    assert ENV is not None
    monkeypatch.setenv("CHRONOQ_DATABASE_URL", "postgresql://chronoq:s3cret@db/prod")
    marker = tmp_path / "marker"
    harness.start_worker(shell_allow=[*jobs.values(), ENV], shell_env_allow=["GREETING"])
    refused = [
        await harness.submit(
            name="chronoq.shell", max_attempts=1, payload={"command": job, "env": env}
        )
        for job in jobs.values()
        for env in hostile_envs(marker)
    ]
    nul = await harness.submit(
        name="chronoq.shell",
        max_attempts=3,
        payload={"command": jobs["bash"], "args": ["a\u0000b"]},
    )
    greeted = await harness.submit(
        name="chronoq.shell", payload={"command": jobs["bash"], "env": {"GREETING": "world"}}
    )
    shown = await harness.submit(name="chronoq.shell", payload={"command": ENV})
    for task in refused:
        dead = await harness.wait_for(task["id"], "dead")
        assert "--shell-env-allow (CHRONOQ_SHELL_ENV_ALLOW)" in dead["error"], dead["error"]
    nul_dead = await harness.wait_for(nul["id"], "dead")
    assert "args[0] contains a NUL byte" in nul_dead["error"]
    assert nul_dead["attempts"] == 1  # no retry can mend it: dead at once
    assert (await harness.wait_for(greeted["id"], "succeeded"))["result"]["stdout"] == "hi world\n"
    stdout = (await harness.wait_for(shown["id"], "succeeded"))["result"]["stdout"]
    assert env_names(stdout) == BASE and "s3cret" not in stdout
    assert not marker.exists()


def test_chronoq_dev_flag(tmp_path: Path, procs: list[Proc]) -> None:
    """``--shell-env-allow`` reaches a real process's worker; its environment stays out."""
    assert ENV is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{tmp_path / 'shell.db'}"
    job = script(tmp_path, "job.sh", '#!/bin/bash\necho "hi ${GREETING-}"\n')
    dev = Proc(
        [
            "dev",
            "--port",
            str(port),
            "--shell-allow",
            f"{job},{ENV}",
            "--shell-env-allow",
            "GREETING",
        ],
        {"CHRONOQ_DATABASE_URL": db, "WORKER_ONLY_SECRET": "s3cret"},
        tmp_path / "dev.log",
    )
    procs.append(dev)
    wait_ready(url, dev)

    def run(payload: dict[str, object], status: str) -> dict[str, object]:
        task = httpx.post(
            f"{url}/v1/tasks", json={"name": "chronoq.shell", "max_attempts": 1, "payload": payload}
        ).json()
        return wait_status(url, task["id"], status, timeout=10)

    assert run({"command": job, "env": {"GREETING": "dev"}}, "succeeded")["result"] == {
        "exit_code": 0,
        "stdout": "hi dev\n",
        "stderr": "",
    }
    shown = run({"command": ENV}, "succeeded")["result"]
    assert isinstance(shown, dict) and env_names(shown["stdout"]) == BASE
    marker = tmp_path / "marker"
    error = run({"command": job, "env": {"BASH_ENV": f"$(touch {marker})"}}, "dead")["error"]
    assert "BASH_ENV" in str(error) and "--shell-env-allow" in str(error)
    assert not marker.exists()
    dev.terminate()


def test_a_worker_refuses_to_start_with_a_dangerous_name(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'refused.db'}"
    for args, env in [
        (["--shell-env-allow", "GREETING,BASH_ENV"], {}),
        ([], {"CHRONOQ_SHELL_ENV_ALLOW": "LD_PRELOAD"}),
    ]:
        started = cli("worker", "--database-url", db, "--shell-allow", "echo", *args, env=env)
        assert started.returncode == 2, started.stderr
        assert "--shell-env-allow" in started.stderr and "may not be allowed" in started.stderr
        assert "Traceback" not in started.stderr
