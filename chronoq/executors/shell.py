"""``chronoq.shell``: run an allow-listed program (never through a shell).

Payload: ``{"command": "backup", "args": ["--fast"], "env": {...}, "cwd": "/srv"}``.
Only programs named in the worker's ``--shell-allow`` list run; exit code 0 is success.
On timeout or cancellation the process is killed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chronoq.executors.base import Executor, TaskFailed

NAME = "chronoq.shell"
MAX_OUTPUT = 16 * 1024


class ShellCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(..., min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class ShellExecutor(Executor):
    def __init__(self, allow: Iterable[str]) -> None:
        self.allow = frozenset(allow)

    async def run(self, payload: dict[str, Any]) -> Any:
        try:
            spec = ShellCommand.model_validate(payload)
        except ValueError as exc:
            raise TaskFailed(f"bad chronoq.shell payload: {exc}") from None
        if spec.command not in self.allow:
            raise TaskFailed(
                f"command {spec.command!r} is not in this worker's shell allow-list "
                f"({', '.join(sorted(self.allow)) or 'empty'})"
            )
        process = await asyncio.create_subprocess_exec(
            spec.command, *spec.args, cwd=spec.cwd, env={**os.environ, **spec.env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await process.communicate()
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        err = stderr.decode(errors="replace")[-MAX_OUTPUT:]
        if process.returncode != 0:
            raise TaskFailed(f"{spec.command} exited with {process.returncode}: {err[-500:]}")
        return {"exit_code": 0, "stdout": stdout.decode(errors="replace")[-MAX_OUTPUT:],
                "stderr": err}
