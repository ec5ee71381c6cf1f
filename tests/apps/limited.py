"""A test app with one keyed handler: ``hold`` runs at most one task per ``k`` at once
(``concurrency_by``), sleeping ``seconds``; for the limits chaos test."""

from __future__ import annotations

import asyncio

from chronoq import App

app = App()


@app.task("hold", concurrency=1, concurrency_by="k", max_attempts=10)
async def hold(k: str, n: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return n
