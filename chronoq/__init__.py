"""chronoq: a distributed task scheduler. One-time and recurring work, durable and fast."""

from __future__ import annotations

__version__ = "0.1.0"

from chronoq.app import App, TaskFunction
from chronoq.canvas import WorkflowFailed, WorkflowHandle, chain, chord, dag, group, step
from chronoq.client import ClientError
from chronoq.executors import TaskContext, TaskFailed, current_task
from chronoq.handles import ResultTimeout, TaskCancelled, TaskDead, TaskHandle
from chronoq.models import BackoffSpec, Task, TaskCreate, TaskPage
from chronoq.remote import AsyncClient, Client
from chronoq.states import Status
from chronoq.store import NotFound

__all__ = [
    "App",
    "AsyncClient",
    "BackoffSpec",
    "Client",
    "ClientError",
    "NotFound",
    "ResultTimeout",
    "Status",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskCreate",
    "TaskDead",
    "TaskFailed",
    "TaskFunction",
    "TaskHandle",
    "TaskPage",
    "WorkflowFailed",
    "WorkflowHandle",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "dag",
    "group",
    "step",
]
