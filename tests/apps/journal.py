"""A test app whose handlers log, print and report progress while they run (task logs,
progress bars and drains, in-process and in ``--pool process`` children)."""

from __future__ import annotations

import asyncio
import logging
import time

from chronoq import App, current_task

app = App()
log = logging.getLogger("tests.journal")


@app.task("journal.steps")
async def steps(steps: int = 5, pause: float = 0.5, tag: str = "job") -> str:
    """Logs and prints each step, reporting progress, ``pause`` seconds apart."""
    ctx = current_task.get()
    for n in range(1, steps + 1):
        log.info("%s step %d of %d", tag, n, steps)
        print(f"{tag} printed {n}", flush=True)
        ctx.progress(n / steps, f"step {n} of {steps}")
        await asyncio.sleep(pause)
    return tag


@app.task("journal.sync_steps")
def sync_steps(steps: int = 3, pause: float = 0.05, tag: str = "sync") -> str:
    """The same from a thread (sync handler)."""
    ctx = current_task.get()
    for n in range(1, steps + 1):
        log.warning("%s step %d", tag, n)
        print(f"{tag} printed {n}")
        ctx.progress(n / steps, f"step {n}")
        time.sleep(pause)
    return tag
