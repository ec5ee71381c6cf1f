"""Start real ``chronoq`` processes for tests, and stop or kill them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """A chronoq subprocess whose output goes to a log file (shown when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.log = args, log
        self.out = log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "chronoq.cli", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout)
        self.out.close()
        return code

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self.out.close()


def wait_ready(url: str, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.args} exited early:\n{proc.output()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.args} not ready after {timeout}s:\n{proc.output()}")


def start_dev(folder: Path, *args: str) -> tuple[Proc, str]:
    """``chronoq dev ARGS`` on a free port with a fresh SQLite file in ``folder``, ready;
    returns it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = Proc(
        ["dev", *args, "--port", str(port), "--database-url", f"sqlite:///{folder / 'dev.db'}"],
        {},
        folder / "dev.log",
    )
    try:
        wait_ready(url, dev)
    except BaseException:
        dev.kill()
        raise
    return dev, url


def wait_status(url: str, task_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = httpx.get(f"{url}/v1/tasks/{task_id}", timeout=5).json()
        if task["status"] in statuses:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"{task_id} is {task['status']}, wanted {statuses}")
        time.sleep(0.05)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chronoq.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
