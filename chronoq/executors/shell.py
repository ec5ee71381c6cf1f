"""``chronoq.shell``: run an allow-listed program (never through a shell).

Payload: ``{"command": "backup", "args": ["--fast"], "env": {...}, "cwd": "/srv"}``.
Only programs named in the worker's ``--shell-allow`` list run; exit code 0 is success.
On timeout or cancellation the process is killed.

The allow-list holds program names (``echo``), found on the *worker's* ``PATH`` when the
task runs, or absolute paths (``/opt/jobs/backup``). A ``command`` containing ``/`` runs
only if that exact path is listed: ``/bin/echo`` is refused when only ``echo`` is. The
program is started directly with ``args`` as its argument vector, so shell syntax in them
(``$(...)``, ``;``, ``|``, globs, quotes) reaches it literally.

The child never inherits the worker's environment (which holds ``CHRONOQ_DATABASE_URL``
and other secrets): it gets :func:`base_environment` plus the payload's ``env`` entries
whose names the operator listed in ``--shell-env-allow``. Any other payload name fails the
attempt. Names that make common programs run code of the caller's choosing (``BASH_ENV``,
``BASH_FUNC_*``, ``PYTHON*``, ``LD_*``...; :func:`dangerous_env_name`) may not be listed at
all: a worker given one refuses to start.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chronoq.executors.base import Executor, TaskFailed

NAME = "chronoq.shell"
MAX_OUTPUT = 16 * 1024
#: the locale every child starts with (UTF-8 output, no dependence on the worker's locale)
LOCALE = "C.UTF-8"
#: what ``--shell-env-allow`` entries must look like (POSIX environment variable names)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: names the child gets from chronoq itself, never from a payload
_OWN = frozenset({"PATH", "HOME"})
#: exact names that make a shell, interpreter or library run code or load files chosen
#: by whoever sets them (compared upper-cased)
_DANGEROUS = frozenset(
    {
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "SHELL",
        "BROWSER",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "MANPAGER",
        "TERMINFO",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "CLASSPATH",
        "TCLLIBPATH",
        "SSH_ASKPASS",
        "SUDO_ASKPASS",
        "ZDOTDIR",
        "XDG_CONFIG_HOME",
        "XDG_CONFIG_DIRS",
    }
)
#: prefixes of such names: the dynamic loader, exported bash functions, interpreters'
#: start-up options and module paths, git, glibc tunables and converters
_DANGEROUS_PREFIXES = (
    "LD_",
    "DYLD_",
    "BASH_FUNC_",
    "PYTHON",
    "PERL",
    "RUBY",
    "NODE_",
    "NPM_",
    "JAVA_",
    "_JAVA_",
    "JDK_",
    "GIT_",
    "LESS",
    "GCONV",
    "GLIBC_",
    "MALLOC_",
    "LUA_",
    "PHP",
    "R_PROFILE",
    "R_ENVIRON",
)


def dangerous_env_name(name: str) -> bool:
    """Whether setting ``name`` could change which code a child runs (a safety net under
    the allow-list, not a replacement for it: no list knows every program's variables)."""
    upper = name.upper()
    return upper in _OWN or upper in _DANGEROUS or upper.startswith(_DANGEROUS_PREFIXES)


def parse_env_allow(entries: Iterable[str]) -> frozenset[str]:
    """The ``--shell-env-allow`` names; ``ValueError`` naming a malformed or dangerous one."""
    names = [e.strip() for e in entries if e.strip()]
    for name in names:
        if dangerous_env_name(name):
            raise ValueError(
                f"shell env allow-list entry {name!r} may not be allowed: it "
                "lets a task choose code the program runs (chronoq sets PATH "
                "and HOME itself; see SECURITY.md)"
            )
        if not _ENV_NAME.match(name):
            raise ValueError(
                f"shell env allow-list entry {name!r} is not an environment "
                "variable name (letters, digits and _, not starting with a digit)"
            )
    return frozenset(names)


def worker_path() -> str:
    """The worker's own ``PATH``: where programs are looked up, and the child's ``PATH``."""
    return os.environ.get("PATH") or os.defpath


def base_environment() -> dict[str, str]:
    """Every child's environment before allow-listed payload entries: the worker's ``PATH``
    and ``HOME`` (set by whoever started the worker, not by a task) and ``LANG``."""
    env = {"PATH": worker_path(), "LANG": LOCALE}
    home = os.environ.get("HOME")
    if home:
        env["HOME"] = home
    return env


class ShellCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(..., min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    def nul_field(self) -> str | None:
        """The first field holding a NUL byte (which a C string would silently cut)."""
        fields = [("command", self.command), ("cwd", self.cwd or "")]
        fields += [(f"args[{i}]", arg) for i, arg in enumerate(self.args)]
        fields += [(f"env[{name!r}]", f"{name}{value}") for name, value in self.env.items()]
        return next((field for field, text in fields if "\0" in text), None)


class ShellExecutor(Executor):
    """``allow``: program names (looked up on the worker's PATH) or absolute paths;
    ``env_allow``: environment variable names a payload may set."""

    def __init__(self, allow: Iterable[str], env_allow: Iterable[str] = ()) -> None:
        entries = [a.strip() for a in allow if a.strip()]
        for entry in entries:
            if "/" in entry and not os.path.isabs(entry):
                raise ValueError(
                    f"shell allow-list entry {entry!r}: give a program name "
                    "(found on PATH) or an absolute path"
                )
        self.allow = frozenset(entries)
        self.env_allow = parse_env_allow(env_allow)

    def _listing(self) -> str:
        return ", ".join(sorted(self.allow)) or "empty"

    def _program(self, command: str) -> str:
        """The executable to start for ``command``, or ``TaskFailed``."""
        if command not in self.allow:
            hint = ""
            if "/" in command and os.path.basename(command) in self.allow:
                hint = (
                    f"; {os.path.basename(command)!r} is allowed by name (found on the "
                    "worker's PATH), a path runs only if listed exactly"
                )
            raise TaskFailed(
                f"command {command!r} is not in this worker's shell allow-list "
                f"({self._listing()}){hint}"
            )
        if "/" in command:
            return command
        found = shutil.which(command, path=worker_path())  # never the payload's env
        if found is None:
            raise TaskFailed(f"command {command!r} is allowed but not found on this worker's PATH")
        return os.path.abspath(found)

    def _environment(self, requested: dict[str, str]) -> dict[str, str]:
        """:func:`base_environment` plus ``requested``, or ``TaskFailed`` naming every
        variable this worker does not allow."""
        refused = sorted(name for name in requested if name not in self.env_allow)
        if refused:
            allowed = ", ".join(sorted(self.env_allow)) or "none"
            raise TaskFailed(
                f"chronoq.shell payload env sets {', '.join(refused)}, which this worker does "
                f"not allow (allowed: {allowed}); the operator can add a name to "
                "--shell-env-allow (CHRONOQ_SHELL_ENV_ALLOW)"
            )
        return {**base_environment(), **requested}

    async def run(self, payload: dict[str, Any]) -> Any:
        try:
            spec = ShellCommand.model_validate(payload)
        except ValueError as exc:
            raise TaskFailed(f"bad chronoq.shell payload: {exc}", retry=False) from None
        nul = spec.nul_field()
        if nul is not None:
            raise TaskFailed(
                f"chronoq.shell payload {nul} contains a NUL byte, which "
                "cannot be passed to a program",
                retry=False,
            )
        program = self._program(spec.command)
        env = self._environment(spec.env)
        try:
            process = await asyncio.create_subprocess_exec(
                program,
                *spec.args,
                cwd=spec.cwd,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except (OSError, ValueError) as exc:  # missing cwd, not executable...
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
        return {
            "exit_code": 0,
            "stdout": stdout.decode(errors="replace")[-MAX_OUTPUT:],
            "stderr": err,
        }
