"""Distributed tracing with OpenTelemetry (the optional ``chronoq[otel]`` extra).

A task carries the W3C ``traceparent`` of its submission (the API's submit span, the
caller's current span in the SDK, a new trace per schedule slot); each attempt's run span
is its child, so one trace shows submit → run across processes and retries are siblings.

Zero cost when off: nothing here imports ``opentelemetry`` until :func:`setup` enables
tracing (``CHRONOQ_TRACING=1``, or ``OTEL_TRACES_EXPORTER`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
/ ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set; ``CHRONOQ_TRACING=0`` or
``OTEL_TRACES_EXPORTER=none`` turn it off), and every hook is one test of :data:`tracer`.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from chronoq.store import Completion, TaskRecord

#: the tracer of this process once :func:`setup` enabled tracing; None: every hook is a no-op
tracer: Tracer | None = None

T = TypeVar("T")

#: a trace context carried without a span of ours: a request's ``traceparent`` when this
#: process does not trace, or a sync ``delay()``'s caller's, taken to the app's loop thread
_carried: ContextVar[str | None] = ContextVar("chronoq_traceparent", default=None)

#: a valid W3C traceparent (version 00), lower-case hex as the recommendation writes it
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for tracing (see the module's docstring)."""
    chosen = env.get("CHRONOQ_TRACING", "").strip().lower()
    if chosen in _OFF or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return chosen in _ON or bool(
        exporter
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(service: str = "chronoq") -> bool:
    """Enable tracing in this process when :func:`wanted`: a tracer provider exporting
    with ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, over ``OTEL_EXPORTER_OTLP_PROTOCOL``
    — ``http/protobuf`` by default, or ``grpc`` — or ``console``, each span when it ends),
    flushed at exit. False when not wanted; an error when the extra is not installed."""
    global tracer
    if tracer is not None or not wanted():
        return tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:  # pragma: no cover - the extra is a dev dependency
        raise RuntimeError(
            "tracing is enabled but OpenTelemetry is not installed: pip install 'chronoq[otel]'"
        ) from exc
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(named))
    kinds = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    for kind in (k.strip() for k in kinds.split(",")):
        if kind == "console":
            # one line per span, written as it ends: a file a test (or a human) can read
            provider.add_span_processor(
                SimpleSpanProcessor(
                    ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + "\n")
                )
            )
        elif kind == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        elif kind in ("", "none"):
            continue
        else:
            raise RuntimeError(f"OTEL_TRACES_EXPORTER={kind!r}: use otlp, console or none")
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    tracer = trace.get_tracer("chronoq")
    return True


def _otlp_exporter() -> Any:
    """The OTLP exporter ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` names (it reads the other
    ``OTEL_EXPORTER_OTLP_*`` variables: endpoint, headers, timeout...)."""
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def valid(traceparent: str | None) -> str | None:
    """``traceparent`` if it is a valid W3C trace context (else None: ignored, as the
    recommendation says, never an error for the client)."""
    if traceparent is None:
        return None
    found = _TRACEPARENT.fullmatch(traceparent.strip().lower())
    if found is None or found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN:
        return None
    return found[0]


def current_traceparent() -> str | None:
    """The traceparent of the caller's current OpenTelemetry span, else the one carried
    (:func:`carrying`, :func:`submit_span`), else None. Never imports OpenTelemetry: when
    nobody imported it, nobody can have a span."""
    if "opentelemetry.trace" not in sys.modules:
        return _carried.get()
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return _carried.get()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parent(traceparent: str | None) -> Any:
    """The OpenTelemetry context whose span is the remote ``traceparent`` (None: a root)."""
    if traceparent is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


async def carrying(coro: Coroutine[Any, Any, T], traceparent: str) -> T:
    """Run ``coro`` (on another thread's loop) with the caller's trace context carried."""
    token = _carried.set(traceparent)
    try:
        return await coro
    finally:
        _carried.reset(token)


def submit_span(traceparent: str | None, transport: str) -> AbstractContextManager[None]:
    """Around a submission to the API: a span, child of the request's ``traceparent``,
    current while the store takes the task (so the task stores the span's context). When
    this process does not trace, the request's own ``traceparent`` goes with the task
    (nothing to do, no generator, for a request without one in a context carrying none)."""
    if tracer is None:
        if traceparent is None and _carried.get() is None:
            return _NO_SPAN
        return _carrying(valid(traceparent))
    return _submit_span(traceparent, transport)


@contextmanager
def _carrying(traceparent: str | None) -> Iterator[None]:
    token = _carried.set(traceparent)
    try:
        yield
    finally:
        _carried.reset(token)


@contextmanager
def _submit_span(traceparent: str | None, transport: str) -> Iterator[None]:
    assert tracer is not None
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    # under the request's span when a server instrumentation made one (its parent is the
    # header's context already), else straight under the header's context
    inside = trace.get_current_span().get_span_context().is_valid
    with tracer.start_as_current_span(
        "chronoq.submit",
        context=None if inside else _parent(valid(traceparent)),
        kind=SpanKind.INTERNAL if inside else SpanKind.SERVER,
        attributes={"chronoq.transport": transport},
    ):
        yield


def slot_traceparent(schedule_id: str, slot: float | None) -> str | None:
    """A new trace for a schedule's slot: a root span ``chronoq.fire`` (ended at once),
    whose context the slot's task stores. None when tracing is off."""
    if tracer is None:
        return None
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {"chronoq.schedule_id": schedule_id}
    if slot is not None:
        attributes["chronoq.slot"] = slot
    span = tracer.start_span(
        "chronoq.fire", context=Context(), kind=SpanKind.PRODUCER, attributes=attributes
    )
    span.end()
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def step_traceparents(
    traceparent: str | None, workflow: str, nodes: Sequence[tuple[str, str]]
) -> list[str] | None:
    """A workflow as spans, ended at once: ``chronoq.workflow <name>``, child of
    ``traceparent`` (the submission's, or a schedule slot's trace; a new trace without
    one), and under it one ``chronoq.step <node>`` per node ``(node id, task name)``.
    Returns the steps' traceparents, in order, for the nodes' tasks to store: each node's
    run spans are its step span's children and link to their parents' step spans, so one
    trace shows the graph. None when tracing is off."""
    if tracer is None:
        return None
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, set_span_in_context

    root = tracer.start_span(
        f"chronoq.workflow {workflow}",
        context=_parent(traceparent) if traceparent is not None else Context(),
        kind=SpanKind.PRODUCER,
        attributes={"chronoq.workflow": workflow, "chronoq.size": len(nodes)},
    )
    root.end()
    parent = set_span_in_context(root)
    found = []
    for node, name in nodes:
        span = tracer.start_span(
            f"chronoq.step {node}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"chronoq.node": node, "chronoq.name": name},
        )
        span.end()
        found.append(_of(span))
    return found


def _of(span: Span) -> str:
    """The traceparent of ``span``."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _link(traceparent: str) -> Any:
    """An OpenTelemetry Link to the span of ``traceparent`` (a workflow parent's step)."""
    from opentelemetry.trace import Link, get_current_span

    return Link(get_current_span(_parent(traceparent)).get_span_context())


#: what :func:`run_span` returns when tracing is off: one shared, reusable no-op
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def run_span(task: TaskRecord) -> AbstractContextManager[Span | None]:
    """Around one attempt: the run span, child of the task's submission (a workflow
    node's: of its step span), linked to its workflow parents' step spans, current while
    the handler runs (its own spans nest under it); None when tracing is off (then it
    costs one call: no generator per attempt)."""
    if tracer is None:
        return _NO_SPAN
    return _run_span(task)


@contextmanager
def _run_span(task: TaskRecord) -> Iterator[Span | None]:
    assert tracer is not None
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {
        "chronoq.task_id": task.id,
        "chronoq.name": task.name,
        "chronoq.queue": task.queue,
        "chronoq.attempt": task.attempts,
        "chronoq.max_attempts": task.max_attempts,
    }
    if task.workflow_id is not None:
        attributes["chronoq.workflow_id"] = task.workflow_id
        attributes["chronoq.node"] = task.node or ""
    with tracer.start_as_current_span(
        f"chronoq.run {task.name}",
        context=_parent(task.traceparent),
        kind=SpanKind.CONSUMER,
        links=[_link(t) for t in task.upstream] or None,
        attributes=attributes,
    ) as span:
        yield span


def ended(span: Span | None, completion: Completion) -> None:
    """Record the attempt's outcome on its run span: status ERROR unless it succeeded."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("chronoq.outcome", completion.outcome)
    if completion.outcome != "succeeded":
        span.set_status(Status(StatusCode.ERROR, completion.error or completion.outcome))


def child_span(traceparent: str | None) -> AbstractContextManager[None]:
    """In a process-pool child: the parent's run span (sent across the pipe as a
    traceparent) is current while the handler runs, so the handler's spans nest under it."""
    if tracer is None or traceparent is None:
        return _NO_SPAN
    return _child_span(traceparent)


@contextmanager
def _child_span(traceparent: str) -> Iterator[None]:
    from opentelemetry import context

    token = context.attach(_parent(traceparent))
    try:
        yield
    finally:
        context.detach(token)


def log_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span for a log line (empty without one)."""
    if tracer is None:
        return {}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
