"""Protocol buffers to the REST API's models and back.

Requests become the dicts a JSON body would have been, validated by the same pydantic
models (so an unset field takes the REST default and a bad one gets the REST message);
JSON values travel as JSON text, parsed by the same parser FastAPI uses (NaN included,
which :func:`chronoq.api.service.check_payload` then refuses, as over REST).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel

from chronoq.api.errors import ApiError
from chronoq.events import TaskEvent
from chronoq.grpc.v1 import chronoq_pb2 as pb
from chronoq.models import Attempt, BackoffSpec, Task, TaskBatch, TaskCreate
from chronoq.store.base import dumps

_SPEC_SCALARS = (
    "queue",
    "priority",
    "max_attempts",
    "timeout_seconds",
    "delay_seconds",
    "idempotency_key",
)
_BACKOFF = ("base", "factor", "max", "jitter")


def _json(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(
            422, "validation_error", f"{field}_json is not valid JSON: {exc}", field
        ) from None


def spec_fields(spec: pb.TaskSpec, field: str = "payload") -> dict[str, Any]:
    """``spec`` as the JSON object ``POST /v1/tasks`` would have received."""
    fields: dict[str, Any] = {"name": spec.name}
    if spec.payload_json:
        fields["payload"] = _json(spec.payload_json, field)
    fields.update({f: getattr(spec, f) for f in _SPEC_SCALARS if spec.HasField(f)})  # type: ignore[arg-type]
    if spec.HasField("backoff"):
        backoff = spec.backoff
        fields["backoff"] = {f: getattr(backoff, f) for f in _BACKOFF if backoff.HasField(f)}  # type: ignore[arg-type]
    if spec.HasField("run_at"):
        fields["run_at"] = spec.run_at.ToDatetime(tzinfo=UTC)
    return fields


def task_create(spec: pb.TaskSpec) -> TaskCreate:
    return TaskCreate.model_validate(spec_fields(spec))


def task_batch(specs: list[pb.TaskSpec]) -> TaskBatch:
    return TaskBatch.model_validate(
        {"tasks": [spec_fields(s, f"tasks.{i}.payload") for i, s in enumerate(specs)]}
    )


def _stamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _backoff(spec: BackoffSpec) -> pb.Backoff:
    return pb.Backoff(base=spec.base, factor=spec.factor, max=spec.max, jitter=spec.jitter)


def _fields(model: Any, message: type[Any]) -> dict[str, Any]:
    """The keyword arguments of ``message`` for ``model``: fields of the same name as they
    are, datetimes as Timestamps, JSON values as ``<name>_json`` text, None left unset."""
    fields: dict[str, Any] = {}
    names = message.DESCRIPTOR.fields_by_name
    for name, value in vars(model).items():
        if value is None:
            continue
        if f"{name}_json" in names:
            fields[f"{name}_json"] = dumps(value)
        elif name in names and isinstance(value, datetime):
            fields[name] = _stamp(value)
        elif name in names and not isinstance(value, list | BaseModel):
            fields[name] = value
    return fields


def _attempt(attempt: Attempt) -> pb.Attempt:
    return pb.Attempt(**_fields(attempt, pb.Attempt))


def task_message(task: Task) -> pb.Task:
    """``task`` as the REST API would have answered it, in protobuf."""
    return pb.Task(
        **_fields(task, pb.Task),
        backoff=_backoff(task.backoff),
        attempt_history=[_attempt(a) for a in task.attempt_history or ()],
        warnings=task.warnings or (),
    )


def event_message(event: TaskEvent) -> pb.TaskEvent:
    at = Timestamp()
    at.FromNanoseconds(round(event.at * 1e9))
    fields = {k: v for k, v in asdict(event).items() if v is not None and k not in ("at", "type")}
    return pb.TaskEvent(**fields, at=at)
