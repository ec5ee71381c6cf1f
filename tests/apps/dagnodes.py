"""A test app for workflow chaos: each node records the attempt it starts in
``$RECORD_FILE`` (task id, attempt, start time), sleeps a little, and returns its id."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from chronoq import App, current_task

app = App()


@app.task("node", max_attempts=20)
async def node(**_parents: Any) -> str:
    ctx = current_task.get()
    with open(os.environ["RECORD_FILE"], "a") as out:  # noqa: ASYNC230 - tiny local write
        out.write(f"{ctx.task_id} {ctx.attempt} {time.time()}\n")
    await asyncio.sleep(random.choice([0.0, 0.01, 0.05]))
    return ctx.task_id
