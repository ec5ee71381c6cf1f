"""``chronoq.Client`` and ``chronoq.AsyncClient``: the REST API from Python, as public models.

For code that reaches chronoq over HTTP (another service, a notebook) rather than through
the database like :class:`chronoq.App`. Each call is described once, as a :class:`Call`
(method, path, body, and the model that parses the answer); the two clients only differ in
how they send it. A refusal raises :class:`chronoq.client.ClientError` with the API's
message, as the CLI's client does.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from chronoq.client import DEFAULT_URL, HttpClient, check, http_options, unreachable
from chronoq.dag import Workflow, WorkflowCreate, WorkflowPage
from chronoq.models import (
    Schedule,
    ScheduleCreate,
    SchedulePage,
    ScheduleUpdate,
    Task,
    TaskCreate,
    TaskPage,
    WorkerInfo,
)
from chronoq.states import Status

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Call(Generic[M]):
    """One API request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], M]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)

    def read(self, response: httpx.Response) -> M:
        check(response)
        return self.parse(None if response.status_code == 204 else response.json())


def submit_call(spec: TaskCreate | dict[str, Any]) -> Call[Task]:
    body = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, TaskCreate) else spec
    return Call("POST", "/v1/tasks", Task.model_validate, json=body)


def list_call(
    status: Status | str | None, queue: str | None, name: str | None, cursor: str | None, limit: int
) -> Call[TaskPage]:
    given = {"status": status, "queue": queue, "name": name, "cursor": cursor, "limit": limit}
    return Call(
        "GET",
        "/v1/tasks",
        TaskPage.model_validate,
        params={k: str(v) for k, v in given.items() if v is not None},
    )


def task_call(task_id: str, action: str = "") -> Call[Task]:
    method = "POST" if action else "GET"
    return Call(method, f"/v1/tasks/{task_id}{action and '/' + action}", Task.model_validate)


def start_call(spec: WorkflowCreate | dict[str, Any]) -> Call[Workflow]:
    body = spec.model_dump(mode="json") if isinstance(spec, WorkflowCreate) else spec
    return Call("POST", "/v1/workflows", Workflow.model_validate, json=body)


def workflow_call(workflow_id: str, action: str = "") -> Call[Workflow]:
    method = "POST" if action else "GET"
    path = f"/v1/workflows/{workflow_id}{action and '/' + action}"
    return Call(method, path, Workflow.model_validate)


def workflows_call(cursor: str | None, limit: int) -> Call[WorkflowPage]:
    params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
    return Call("GET", "/v1/workflows", WorkflowPage.model_validate, params=params)


def schedule_create_call(spec: ScheduleCreate | dict[str, Any]) -> Call[Schedule]:
    body = spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, BaseModel) else spec
    return Call("POST", "/v1/schedules", Schedule.model_validate, json=body)


def schedule_call(key: str, action: str = "") -> Call[Schedule]:
    """Read (no ``action``), ``pause`` or ``resume`` schedule ``key`` (its id or name)."""
    method = "POST" if action else "GET"
    return Call(method, f"/v1/schedules/{key}{action and '/' + action}", Schedule.model_validate)


def schedule_update_call(key: str, changes: ScheduleUpdate | dict[str, Any]) -> Call[Schedule]:
    body = (
        changes.model_dump(mode="json", exclude_unset=True)
        if isinstance(changes, BaseModel)
        else changes
    )
    return Call("PATCH", f"/v1/schedules/{key}", Schedule.model_validate, json=body)


def schedule_delete_call(key: str) -> Call[None]:
    return Call("DELETE", f"/v1/schedules/{key}", _nothing)


def trigger_call(key: str) -> Call[Task]:
    return Call("POST", f"/v1/schedules/{key}/trigger", Task.model_validate)


def schedules_call(cursor: str | None, limit: int) -> Call[SchedulePage]:
    params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
    return Call("GET", "/v1/schedules", SchedulePage.model_validate, params=params)


def workers_call(include_gone: bool) -> Call[list[WorkerInfo]]:
    params = {"all": "true"} if include_gone else {}
    return Call("GET", "/v1/workers", _workers, params=params)


def worker_call(worker_id: str, action: str = "") -> Call[WorkerInfo]:
    """Read (no ``action``), ``drain`` or ``stop`` a worker (``admin`` scope for those)."""
    method = "POST" if action else "GET"
    path = f"/v1/workers/{worker_id}{action and '/' + action}"
    return Call(method, path, WorkerInfo.model_validate)


def _nothing(_: Any) -> None:
    return None


def _workers(body: Any) -> list[WorkerInfo]:
    return [WorkerInfo.model_validate(item) for item in body]


class Client(HttpClient):
    """Blocking client: ``with chronoq.Client(url, api_key=...) as c: c.get(task_id)``."""

    def call(self, call: Call[M]) -> M:
        try:
            response = self.http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as exc:
            raise unreachable(self.http.base_url, exc) from None
        return call.read(response)

    def submit(self, spec: TaskCreate | dict[str, Any]) -> Task:
        """Submit a task (a ``TaskCreate`` or its JSON form)."""
        return self.call(submit_call(spec))

    def get(self, task_id: str) -> Task:
        """The task with its attempt history."""
        return self.call(task_call(task_id))

    def list(
        self,
        *,
        status: Status | str | None = None,
        queue: str | None = None,
        name: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """One page of tasks, newest first; pass ``next_cursor`` as ``cursor`` for more."""
        return self.call(list_call(status, queue, name, cursor, limit))

    def cancel(self, task_id: str) -> Task:
        return self.call(task_call(task_id, "cancel"))

    def retry(self, task_id: str) -> Task:
        return self.call(task_call(task_id, "retry"))

    def start_workflow(self, spec: WorkflowCreate | dict[str, Any]) -> Workflow:
        """Start a workflow (a ``WorkflowCreate``, e.g. ``chronoq.chain(...).spec()``, or
        its JSON form)."""
        return self.call(start_call(spec))

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow with every node's state."""
        return self.call(workflow_call(workflow_id))

    def list_workflows(self, *, cursor: str | None = None, limit: int = 50) -> WorkflowPage:
        return self.call(workflows_call(cursor, limit))

    def cancel_workflow(self, workflow_id: str) -> Workflow:
        return self.call(workflow_call(workflow_id, "cancel"))

    def retry_workflow(self, workflow_id: str) -> Workflow:
        return self.call(workflow_call(workflow_id, "retry"))

    def create_schedule(self, spec: ScheduleCreate | dict[str, Any]) -> Schedule:
        """Create a recurring schedule (a ``ScheduleCreate`` or its JSON form)."""
        return self.call(schedule_create_call(spec))

    def get_schedule(self, key: str) -> Schedule:
        """A schedule by id or name, with its next fire times."""
        return self.call(schedule_call(key))

    def list_schedules(self, *, cursor: str | None = None, limit: int = 50) -> SchedulePage:
        return self.call(schedules_call(cursor, limit))

    def update_schedule(self, key: str, changes: ScheduleUpdate | dict[str, Any]) -> Schedule:
        """Change the fields given (a ``ScheduleUpdate`` or its JSON form)."""
        return self.call(schedule_update_call(key, changes))

    def pause_schedule(self, key: str) -> Schedule:
        return self.call(schedule_call(key, "pause"))

    def resume_schedule(self, key: str) -> Schedule:
        return self.call(schedule_call(key, "resume"))

    def trigger_schedule(self, key: str) -> Task:
        """Run the schedule's task now, outside its slots."""
        return self.call(trigger_call(key))

    def delete_schedule(self, key: str) -> None:
        self.call(schedule_delete_call(key))

    def workers(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        """Alive workers; ``include_gone`` adds stopped and dead ones."""
        return self.call(workers_call(include_gone))

    def get_worker(self, worker_id: str) -> WorkerInfo:
        return self.call(worker_call(worker_id))

    def drain_worker(self, worker_id: str) -> WorkerInfo:
        """Ask a worker to finish what it runs and exit (``admin`` scope)."""
        return self.call(worker_call(worker_id, "drain"))

    def stop_worker(self, worker_id: str) -> WorkerInfo:
        """Ask a worker for a graceful shutdown, as SIGTERM (``admin`` scope)."""
        return self.call(worker_call(worker_id, "stop"))


class AsyncClient:
    """:class:`Client` for async code: ``async with chronoq.AsyncClient(url) as c: ...``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            **http_options(base_url, api_key, timeout), transport=transport
        )

    async def call(self, call: Call[M]) -> M:
        try:
            response = await self.http.request(
                call.method, call.path, json=call.json, params=call.params
            )
        except httpx.TransportError as exc:
            raise unreachable(self.http.base_url, exc) from None
        return call.read(response)

    async def submit(self, spec: TaskCreate | dict[str, Any]) -> Task:
        return await self.call(submit_call(spec))

    async def get(self, task_id: str) -> Task:
        return await self.call(task_call(task_id))

    async def list(
        self,
        *,
        status: Status | str | None = None,
        queue: str | None = None,
        name: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> TaskPage:
        return await self.call(list_call(status, queue, name, cursor, limit))

    async def cancel(self, task_id: str) -> Task:
        return await self.call(task_call(task_id, "cancel"))

    async def retry(self, task_id: str) -> Task:
        return await self.call(task_call(task_id, "retry"))

    async def start_workflow(self, spec: WorkflowCreate | dict[str, Any]) -> Workflow:
        return await self.call(start_call(spec))

    async def get_workflow(self, workflow_id: str) -> Workflow:
        return await self.call(workflow_call(workflow_id))

    async def list_workflows(self, *, cursor: str | None = None, limit: int = 50) -> WorkflowPage:
        return await self.call(workflows_call(cursor, limit))

    async def cancel_workflow(self, workflow_id: str) -> Workflow:
        return await self.call(workflow_call(workflow_id, "cancel"))

    async def retry_workflow(self, workflow_id: str) -> Workflow:
        return await self.call(workflow_call(workflow_id, "retry"))

    async def create_schedule(self, spec: ScheduleCreate | dict[str, Any]) -> Schedule:
        return await self.call(schedule_create_call(spec))

    async def get_schedule(self, key: str) -> Schedule:
        return await self.call(schedule_call(key))

    async def list_schedules(self, *, cursor: str | None = None, limit: int = 50) -> SchedulePage:
        return await self.call(schedules_call(cursor, limit))

    async def update_schedule(self, key: str, changes: ScheduleUpdate | dict[str, Any]) -> Schedule:
        return await self.call(schedule_update_call(key, changes))

    async def pause_schedule(self, key: str) -> Schedule:
        return await self.call(schedule_call(key, "pause"))

    async def resume_schedule(self, key: str) -> Schedule:
        return await self.call(schedule_call(key, "resume"))

    async def trigger_schedule(self, key: str) -> Task:
        return await self.call(trigger_call(key))

    async def delete_schedule(self, key: str) -> None:
        await self.call(schedule_delete_call(key))

    async def workers(self, *, include_gone: bool = False) -> builtins.list[WorkerInfo]:
        return await self.call(workers_call(include_gone))

    async def get_worker(self, worker_id: str) -> WorkerInfo:
        return await self.call(worker_call(worker_id))

    async def drain_worker(self, worker_id: str) -> WorkerInfo:
        return await self.call(worker_call(worker_id, "drain"))

    async def stop_worker(self, worker_id: str) -> WorkerInfo:
        return await self.call(worker_call(worker_id, "stop"))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
