"""A test app whose handler records every attempt it starts in ``$RECORD_FILE``."""

from __future__ import annotations

import asyncio
import os

from chronoq import App, current_task

app = App()


@app.task("record")
async def record(sleep: float = 0.0) -> str:
    ctx = current_task.get()
    line = f"{ctx.task_id} {ctx.worker_id} {ctx.attempt}\n"
    with open(os.environ["RECORD_FILE"], "a") as out:  # noqa: ASYNC230 - tiny local write
        out.write(line)
    await asyncio.sleep(sleep)
    return ctx.worker_id
