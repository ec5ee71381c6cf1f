"""A test app whose handler blocks the worker's event loop (``time.sleep`` in ``async def``)
and records every attempt it starts in ``$RECORD_FILE``."""

from __future__ import annotations

import os
import time

from chronoq import App, current_task

app = App()


@app.task("block")
async def block(seconds: float) -> str:
    ctx = current_task.get()
    with open(os.environ["RECORD_FILE"], "a") as out:  # noqa: ASYNC230 - tiny local write
        out.write(f"{ctx.task_id} {ctx.worker_id} {ctx.attempt}\n")
    time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop is the point
    return ctx.worker_id
