"""The process pool: handlers run in child processes the worker starts, feeds and replaces.

The worker process keeps everything that must stay alive (claims, leases, heartbeats,
completions); user code runs in ``N`` children (:mod:`chronoq.pool.child`), one task per
child at a time, over a pipe of JSON lines. Each child has one reader task here, which turns
its reply (or its death) into the outcome of the attempt it was running:

- a reply: the handler's result, or :class:`ChildError` carrying the child's exception;
- the child died (exit, signal, OOM kill): :class:`ChildCrashed`, naming the exit code or
  signal; only that attempt fails and a fresh child takes the slot;
- the caller was cancelled (timeout, cancel, shutdown): the child is terminated (SIGTERM,
  SIGKILL after ``kill_grace``), since a running handler cannot be asked to stop.

Children that keep dying are restarted with backoff (0.1 s doubling to 10 s while crashes
come less than ``crash_window`` apart). ``max_tasks_per_child`` and ``max_memory_mib``
recycle children between tasks; a child over the memory limit mid-task is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from chronoq.events import WorkerEvent
from chronoq.executors.base import Executor, TaskContext, TaskFailed, current_task
from chronoq.models import Outcome
from chronoq.pool import protocol

log = logging.getLogger("chronoq.pool")

#: the longest reply line a child may send (results past it fail in the child)
DEFAULT_RESULT_LIMIT = 16 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class PoolFailure(Exception):
    """An attempt that ended badly in a child: the worker records ``outcome`` and ``error``."""

    outcome: Outcome = "failed"
    traceback: str | None = None
    retry = True

    @property
    def error(self) -> str:
        return str(self)


class ChildCrashed(PoolFailure):
    """The child running the attempt died or was killed for a limit: outcome ``crashed``."""

    outcome: Outcome = "crashed"


class ChildError(PoolFailure):
    """The handler raised in the child: its exception's type name, message and traceback."""

    def __init__(
        self, type_name: str, message: str, traceback: str | None, retry: bool = True
    ) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.retry = retry


class PoolError(RuntimeError):
    """The pool cannot start its children (e.g. the app fails to import in them)."""


def child_command(
    app: str | None, *, demo: bool = False, result_limit: int = DEFAULT_RESULT_LIMIT
) -> list[str]:
    """The command line of a child that runs ``app``'s handlers."""
    command = [sys.executable, "-m", "chronoq.pool.child", "--result-limit", str(result_limit)]
    if app:
        command += ["--app", app]
    if demo:
        command.append("--demo")
    return command


def describe_exit(code: int, pid: int) -> str:
    """``child process killed by SIGSEGV (pid 12)`` or ``... exited with code 1 (pid 12)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"child process killed by {name} (pid {pid})"
    return f"child process exited with code {code} (pid {pid})"


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class ChildRestart:
    """A child that died or was killed and is being replaced (not one recycled or scaled
    away): what the worker reports on its event bus."""

    slot: int
    pid: int
    #: the child's return code: negative for the signal that ended it
    returncode: int
    #: the error of the attempt it was running, e.g. ``child process killed by SIGSEGV``
    reason: str
    #: false when the pool killed it for a timeout or a cancellation
    crash: bool
    task_id: str | None
    #: children of this pool replaced so far, this one included
    restarts: int
    #: seconds before the replacement starts (crash-loop backoff), and the crashes behind it
    backoff: float
    crashes_in_a_row: int

    def event(self, worker_id: str, at: float) -> WorkerEvent:
        signal_name = None
        if self.returncode < 0:
            try:
                signal_name = signal.Signals(-self.returncode).name
            except ValueError:
                signal_name = f"signal {-self.returncode}"
        return WorkerEvent(
            worker_id,
            "child_restarted",
            at,
            slot=self.slot,
            pid=self.pid,
            exit_code=self.returncode if self.returncode >= 0 else None,
            signal=signal_name,
            crash=self.crash,
            task_id=self.task_id,
            error=self.reason,
            restarts=self.restarts,
            backoff=round(self.backoff, 3),
            crashes_in_a_row=self.crashes_in_a_row,
        )


class _Child:
    """One child process and what it is doing."""

    __slots__ = (
        "context",
        "crash",
        "kill_reason",
        "pid",
        "proc",
        "reader",
        "ready",
        "reply",
        "slot",
        "state",
        "task_id",
        "tasks",
    )

    def __init__(self, proc: asyncio.subprocess.Process, slot: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        #: its place in the pool, 0 to processes - 1; a replacement takes the freed one
        self.slot = slot
        #: starting -> idle <-> busy -> retiring | killing -> dead
        self.state = "starting"
        self.tasks = 0
        self.reply: asyncio.Future[dict[str, Any]] | None = None
        self.task_id: str | None = None
        #: the attempt it runs: its journal takes the child's captured lines and progress
        self.context: TaskContext | None = None
        #: why the pool killed it (becomes the attempt's error), None when it died itself
        self.kill_reason: str | None = None
        #: whether its end counts as a crash (it died itself, or broke a memory limit)
        self.crash = True
        self.reader: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ProcessPool:
    """``processes`` children running ``command``; :meth:`run` sends one attempt to one.

    ``target`` (default: ``processes``) is asked for the wanted number of children; the
    runner points it at the worker's autoscaled concurrency.
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_mib: float | None = None,
        kill_grace: float = 1.0,
        memory_check_seconds: float = 0.25,
        start_timeout: float = 60.0,
        crash_window: float = 10.0,
        result_limit: int = DEFAULT_RESULT_LIMIT,
    ) -> None:
        if processes < 1:
            raise ValueError(f"a process pool needs at least 1 process, got {processes}")
        self.command = list(command)
        self.processes = processes
        self.target: Callable[[], int] = lambda: self.processes
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_mib = max_memory_mib
        self.kill_grace = kill_grace
        self.memory_check_seconds = memory_check_seconds
        self.start_timeout = start_timeout
        self.crash_window = crash_window
        self.result_limit = result_limit
        #: children replaced after dying or being killed (not recycled or scaled away)
        self.restarts = 0
        #: called each time a child has to be replaced
        self.on_restart: Callable[[ChildRestart], None] | None = None
        self.children: set[_Child] = set()
        self._idle: deque[_Child] = deque()
        self._waiters: deque[asyncio.Future[_Child]] = deque()
        self._wake: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._streak = 0
        self._last_crash = 0.0
        self._spawn_after = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the children and wait until each imported the app."""
        self._wake = asyncio.Event()
        first = [await self._spawn() for _ in range(max(1, self.target()))]
        _, pending = await asyncio.wait([c.ready for c in first], timeout=self.start_timeout)
        failed = [c.ready.exception() for c in first if c.ready.done() and c.ready.exception()]
        if failed or pending:
            reason = failed[0] if failed else f"not ready after {self.start_timeout:.0f}s"
            await self.close()
            raise PoolError(f"pool children failed to start: {reason} (see their output)")
        self._supervisor = asyncio.create_task(self._supervise(), name="chronoq-pool")
        log.info(
            "process pool: %d children (pids %s)", len(first), ",".join(str(c.pid) for c in first)
        )

    async def close(self, grace: float = 5.0) -> None:
        """Stop every child: idle ones leave when their stdin closes, the rest are killed
        after ``grace`` seconds."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolError("the process pool is closed"))
        children = list(self.children)
        for child in children:
            if child.state in ("idle", "starting"):
                self._retire(child)
            elif child.state == "busy":
                self._kill(child, "the worker stopped its process pool", crash=False)
        readers = [c.reader for c in children if c.reader is not None]
        if readers:
            _, pending = await asyncio.wait(readers, timeout=grace)
            for child in children:
                if child.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def describe(self) -> list[dict[str, Any]]:
        """The children as ``/v1/workers`` shows them: slot, pid, state, task, memory."""
        return [
            {
                "slot": c.slot,
                "pid": c.pid,
                "state": c.state,
                "task_id": c.task_id,
                "tasks": c.tasks,
                "rss_mib": None if (rss := rss_mib(c.pid)) is None else round(rss, 1),
            }
            for c in sorted(self.children, key=lambda c: c.slot)
        ]

    # -- running one task --------------------------------------------------------------------
    async def run(self, context: TaskContext, payload: dict[str, Any]) -> Any:
        """Run one attempt in an idle child (waiting for one) and return its result; raises
        :class:`ChildCrashed`, :class:`ChildError` or :class:`TaskFailed`. Cancelling this
        (timeout, cancel, drain) kills the child."""
        line = protocol.request(context, payload)
        child = await self._acquire()
        reply_future = asyncio.get_running_loop().create_future()
        child.state, child.reply, child.task_id = "busy", reply_future, context.task_id
        child.context = context
        with contextlib.suppress(ConnectionError, RuntimeError):  # gone: its reader says so
            child.proc.stdin.write(line)  # type: ignore[union-attr]
        try:
            reply = await reply_future
        except asyncio.CancelledError:
            self._kill(child, "the attempt was stopped (timeout, cancel or shutdown)", crash=False)
            raise
        child.tasks += 1
        child.reply = child.task_id = None
        child.context = None
        self._after_task(child)
        if reply["ok"]:
            return reply["result"]
        if reply.get("task_failed"):
            raise TaskFailed(reply["message"], retry=bool(reply.get("retry", True)))
        raise ChildError(
            reply["type"], reply["message"], reply.get("traceback"), reply.get("retry", True)
        )

    async def _acquire(self) -> _Child:
        while self._idle:
            child = self._idle.popleft()
            if child.state == "idle":
                return child
        if self._closing:
            raise PoolError("the process pool is closed")
        waiter: asyncio.Future[_Child] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            raise

    def _release(self, child: _Child) -> None:
        """An idle child: to the first waiter, else to the idle queue."""
        if child.state != "idle":
            return
        if self._closing:
            self._retire(child)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    def _after_task(self, child: _Child) -> None:
        """Recycle a child at its task or memory limit, or when there are too many."""
        if child.state != "busy":
            return
        child.state = "idle"
        why = self._recycle_reason(child)
        if why is not None:
            log.info("recycling child %d: %s", child.pid, why)
            self._retire(child)
            self._poke()
            return
        self._release(child)

    def _recycle_reason(self, child: _Child) -> str | None:
        if self.max_tasks_per_child is not None and child.tasks >= self.max_tasks_per_child:
            return f"it ran {child.tasks} tasks (--max-tasks-per-child)"
        if self.max_memory_mib is not None:
            rss = rss_mib(child.pid)
            if rss is not None and rss > self.max_memory_mib:
                return (
                    f"its RSS {rss:.0f} MiB is over --max-memory-per-child "
                    f"{self.max_memory_mib:g} MiB"
                )
        if self._live() > max(1, self.target()):
            return "the pool shrinks"
        return None

    # -- children ----------------------------------------------------------------------------
    async def _spawn(self) -> _Child:
        taken = {c.slot for c in self.children}
        slot = next(i for i in range(len(taken) + 1) if i not in taken)
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=self.result_limit + 64 * 1024,
        )
        child = _Child(proc, slot)
        self.children.add(child)
        child.reader = asyncio.create_task(self._read(child), name=f"chronoq-child-{proc.pid}")
        return child

    async def _read(self, child: _Child) -> None:
        """The one reader of a child's replies; when they end, the child's exit."""
        stdout = child.proc.stdout
        assert stdout is not None
        try:
            line = await stdout.readline()
            if line:
                orjson.loads(line)  # {"ready": pid, "handlers": [...]}
                child.state = "idle"
                child.ready.set_result(None)
                self._release(child)
                while line := await stdout.readline():
                    message = orjson.loads(line)
                    if protocol.is_journal(message):
                        _journal(child, message)
                        continue
                    reply = child.reply
                    if reply is not None and not reply.done():
                        reply.set_result(message)
        except (ValueError, orjson.JSONDecodeError) as exc:  # a reply past the limit, or junk
            self._kill(
                child,
                f"child process {child.pid} sent an unreadable reply: {exc}",
                crash=True,
                sig=signal.SIGKILL,
            )
        finally:
            code = await child.proc.wait()
            self._exited(child, code)

    def _exited(self, child: _Child, code: int) -> None:
        planned = child.state == "retiring" or (self._closing and child.reply is None)
        was_busy = child.reply is not None and not child.reply.done()
        reason = child.kill_reason or describe_exit(code, child.pid)
        child.state = "dead"
        self.children.discard(child)
        if not child.ready.done():
            child.ready.set_exception(ChildCrashed(reason))
            child.ready.exception()  # retrieved: start() or nobody may look
        if was_busy:
            assert child.reply is not None
            child.reply.set_exception(ChildCrashed(reason))
        self._poke()
        if planned or self._closing:
            return
        self.restarts += 1
        now = time.monotonic()
        if child.crash:
            self._streak = self._streak + 1 if now - self._last_crash < self.crash_window else 1
            self._last_crash = now
            delay = min(0.1 * 2 ** (self._streak - 1), 10.0) if self._streak > 1 else 0.0
            self._spawn_after = now + delay
            running = f" while running task {child.task_id}" if was_busy else ""
            log.warning(
                "%s%s; starting a new child%s",
                reason,
                running,
                f" in {delay:.1f}s ({self._streak} crashes in a row)" if delay else "",
            )
        if self.on_restart is not None:
            self.on_restart(
                ChildRestart(
                    child.slot,
                    child.pid,
                    code,
                    reason,
                    child.crash,
                    child.task_id if was_busy else None,
                    self.restarts,
                    max(self._spawn_after - now, 0.0),
                    self._streak if child.crash else 0,
                )
            )

    def _retire(self, child: _Child) -> None:
        """Let an idle child leave: its stdin closes, it exits; killed if it lingers."""
        child.state = "retiring"
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        if child.proc.stdin is not None:
            child.proc.stdin.close()
        asyncio.get_running_loop().call_later(5.0, self._force_kill, child)

    def _kill(
        self, child: _Child, reason: str, *, crash: bool, sig: signal.Signals = signal.SIGTERM
    ) -> None:
        """Stop a child now: ``sig``, then SIGKILL after ``kill_grace``. ``reason`` becomes
        the error of the attempt it ran; ``crash`` says whether it counts as a crash."""
        if child.state in ("dead", "killing"):
            return
        child.state = "killing"
        child.kill_reason = reason
        child.crash = crash
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(sig)
        if sig != signal.SIGKILL:
            asyncio.get_running_loop().call_later(self.kill_grace, self._force_kill, child)

    @staticmethod
    def _force_kill(child: _Child) -> None:
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()

    def _live(self) -> int:
        return sum(1 for c in self.children if c.state in ("starting", "idle", "busy"))

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- supervision -------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Keep ``target()`` children alive, retire surplus idle ones, watch memory."""
        assert self._wake is not None
        while True:
            self._wake.clear()
            want = max(1, self.target())
            try:
                await self._keep(want)
            except Exception:  # never stop supervising: log, and try again next round
                log.exception("process pool supervision failed")
                self._spawn_after = time.monotonic() + 1.0
            timeout = self.memory_check_seconds if self.max_memory_mib is not None else 1.0
            if self._live() < want:
                timeout = min(timeout, max(self._spawn_after - time.monotonic(), 0.01))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _keep(self, want: int) -> None:
        live = self._live()
        if live < want and time.monotonic() >= self._spawn_after:
            for _ in range(want - live):
                await self._spawn()
        elif live > want:
            for child in [c for c in self._idle if c.state == "idle"][: live - want]:
                log.info("retiring child %d: the pool shrinks to %d", child.pid, want)
                self._retire(child)
        if self.max_memory_mib is not None:
            self._check_memory()

    def _check_memory(self) -> None:
        limit = self.max_memory_mib
        assert limit is not None
        for child in list(self.children):
            if child.state != "busy":
                continue
            rss = rss_mib(child.pid)
            if rss is not None and rss > limit:
                self._kill(
                    child,
                    f"child process {child.pid} killed: its RSS {rss:.0f} MiB "
                    f"is over --max-memory-per-child {limit:g} MiB",
                    crash=True,
                    sig=signal.SIGKILL,
                )


def _journal(child: _Child, message: dict[str, Any]) -> None:
    """A captured line or progress report of the attempt ``child`` runs: to its journal."""
    context = child.context
    if context is None or context.journal is None:
        return
    if message.get("log", message.get("progress")) != context.task_id:
        return
    if "log" in message:
        context.journal.write(str(message.get("s", "stdout")), str(message.get("t", "")))
        return
    value = message.get("v")
    if isinstance(value, int | float):
        note = message.get("m")
        context.journal.progress(
            min(max(float(value), 0.0), 1.0), None if note is None else str(note)
        )


class PoolExecutor(Executor):
    """Runs a handler's attempts in a :class:`ProcessPool` (the pool is closed by its owner,
    the worker, not by this executor)."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool

    async def run(self, payload: dict[str, Any]) -> Any:
        return await self.pool.run(current_task.get(), payload)
