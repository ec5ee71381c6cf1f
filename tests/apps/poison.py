"""Test handlers for the process pool: ordinary ones that record each attempt they start
and finish in ``$RECORD_FILE`` (``start``/``end`` lines with the child's pid), and poison
ones that kill their process, hog memory, or never return."""

from __future__ import annotations

import ctypes
import os
import time

from chronoq import App, TaskFailed, current_task

app = App()


def _note(event: str) -> None:
    ctx = current_task.get()
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(f"{event} {ctx.task_id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n")


@app.task("ok")
def ok(n: int = 0, sleep: float = 0.0) -> dict[str, int]:
    _note("start")
    time.sleep(sleep)
    _note("end")
    return {"n": n, "pid": os.getpid()}


@app.task("ok_async")
async def ok_async(n: int = 0) -> int:
    _note("start")
    _note("end")
    return n


@app.task("exit", max_attempts=2, backoff={"base": 0.2, "jitter": 0})
def exit_now(code: int = 1) -> None:
    _note("start")
    os._exit(code)


@app.task("segfault", max_attempts=2, backoff={"base": 0.2, "jitter": 0})
def segfault() -> None:
    _note("start")
    ctypes.string_at(0)


@app.task("hog", max_attempts=1)
def hog(mib: int = 2000) -> None:
    _note("start")
    chunks = []
    for _ in range(mib):
        chunks.append(bytearray(1024 * 1024))
        time.sleep(0.002)


@app.task("sleepy", max_attempts=1)
def sleepy(seconds: float = 60.0) -> None:
    _note("start")
    time.sleep(seconds)


@app.task("fails", max_attempts=1)
def fails(permanent: bool = False) -> None:
    if permanent:
        raise TaskFailed("expected failure")
    raise ValueError("bad input")


@app.task("pid")
def pid() -> int:
    return os.getpid()


@app.task("isolated", pool="process")
def isolated() -> int:
    """Runs in a pool child whatever the worker's --pool."""
    return os.getpid()


@app.task("inline", pool="async")
async def inline() -> int:
    """Runs in the worker process whatever the worker's --pool."""
    return os.getpid()
