"""The App the benchmark workers load: one no-op handler, ``bench.noop``.

Run by ``benchmarks/throughput.py`` as
``chronoq worker --app benchmarks.bench_app:app`` from the repository root.
"""

from __future__ import annotations

from chronoq import App

app = App()


@app.task("bench.noop", max_attempts=1)
async def noop() -> None:
    """Do nothing: the benchmark measures chronoq's overhead, not the handler's."""
    return None
