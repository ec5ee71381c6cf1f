"""A test app for tracing: ``flaky`` fails its first attempt, opening a span of its own
(and logging) inside the run span each time."""

from __future__ import annotations

import logging

from opentelemetry import trace

from chronoq import App, current_task

app = App()


@app.task("flaky")
async def flaky() -> int:
    ctx = current_task.get()
    with trace.get_tracer("tests.apps.traced").start_as_current_span("handler.work") as span:
        span.set_attribute("attempt", ctx.attempt)
        logging.getLogger("tests.traced").warning("inside attempt %d", ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return ctx.attempt
