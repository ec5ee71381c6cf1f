"""``chronoq.shell``: run an allow-listed program (never through a shell).

Payload: ``{"command": "backup", "args": ["--fast"], "env": {...}, "cwd": "/srv"}``.
Only programs named in the worker's ``--shell-allow`` list run; exit code 0 is success.
On timeout or cancellation the process is killed.

The allow-list holds program names (``echo``), found on the *worker's* ``PATH`` when the
task runs, or absolute paths (``/opt/jobs/backup``). A ``command`` containing ``/`` runs
only if that exact path is listed: ``/bin/echo`` is refused when only ``echo`` is. The
program is started directly with ``args`` as its argument vector, so shell syntax in them
(``$(...)``, ``;``, ``|``, globs, quotes) reaches it literally. The payload's ``env`` may
not set ``PATH`` or the dynamic loader's variables (``LD_*``, ``DYLD_*``), which would
change which code runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chronoq.executors.base import Executor, TaskFailed

NAME = "chronoq.shell"
MAX_OUTPUT = 16 * 1024


def _forbidden_env(name: str) -> bool:
    upper = name.upper()
    return upper == "PATH" or upper.startswith(("LD_", "DYLD_"))


class ShellCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(..., min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class ShellExecutor(Executor):
    """``allow``: program names (looked up on the worker's PATH) or absolute paths."""

    def __init__(self, allow: Iterable[str]) -> None:
        entries = [a.strip() for a in allow if a.strip()]
        for entry in entries:
            if "/" in entry and not os.path.isabs(entry):
                raise ValueError(f"shell allow-list entry {entry!r}: give a program name "
                                 "(found on PATH) or an absolute path")
        self.allow = frozenset(entries)

    def _listing(self) -> str:
        return ", ".join(sorted(self.allow)) or "empty"

    def _program(self, command: str) -> str:
        """The executable to start for ``command``, or ``TaskFailed``."""
        if command not in self.allow:
            hint = ""
            if "/" in command and os.path.basename(command) in self.allow:
                hint = (f"; {os.path.basename(command)!r} is allowed by name (found on the "
                        "worker's PATH), a path runs only if listed exactly")
            raise TaskFailed(f"command {command!r} is not in this worker's shell allow-list "
                             f"({self._listing()}){hint}")
        if "/" in command:
            return command
        # the worker's own PATH, never the payload's env
        found = shutil.which(command, path=os.environ.get("PATH", os.defpath))
        if found is None:
            raise TaskFailed(f"command {command!r} is allowed but not found on this worker's "
                             "PATH")
        return os.path.abspath(found)

    async def run(self, payload: dict[str, Any]) -> Any:
        try:
            spec = ShellCommand.model_validate(payload)
        except ValueError as exc:
            raise TaskFailed(f"bad chronoq.shell payload: {exc}") from None
        program = self._program(spec.command)
        forbidden = sorted(k for k in spec.env if _forbidden_env(k))
        if forbidden:
            raise TaskFailed(f"chronoq.shell payload env may not set {', '.join(forbidden)} "
                             "(it would change which program or library code runs)")
        try:
            process = await asyncio.create_subprocess_exec(
                program, *spec.args, cwd=spec.cwd, env={**os.environ, **spec.env},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except (OSError, ValueError) as exc:  # missing cwd, NUL byte in an argument...
            raise TaskFailed(f"cannot start {spec.command}: {exc}") from None
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
