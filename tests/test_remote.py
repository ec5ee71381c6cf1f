"""chronoq.Client / chronoq.AsyncClient: the REST API from Python, returning public models."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn

import chronoq
from chronoq import App, AsyncClient, Client, ClientError, Status, TaskCreate
from chronoq.api import create_api
from chronoq.models import Schedule, ScheduleCreate, ScheduleUpdate
from tests.conftest import Harness
from tests.processes import free_port
from tests.waiting import until


async def test_async_client_submits_gets_lists_cancels_retries(app: App, harness: Harness) -> None:
    transport = httpx.ASGITransport(app=create_api(app))
    async with AsyncClient("http://chronoq", transport=transport) as client:
        task = await client.submit(TaskCreate(name="nobody.handles.this", max_attempts=1))
        assert isinstance(task, chronoq.Task) and task.status is Status.QUEUED
        later = await client.submit({"name": "later", "delay_seconds": 3600})
        assert later.status is Status.SCHEDULED
        page = await client.list(status="scheduled")
        assert [t.id for t in page.items] == [later.id] and page.next_cursor is None
        assert (await client.cancel(later.id)).status is Status.CANCELLED
        harness.start_worker()
        dead = await harness.wait_for(task.id, "dead")
        assert (await client.get(task.id)).error == dead["error"]
        got = await client.get(task.id)
        assert got.attempt_history is not None and len(got.attempt_history) == 1
        assert (await client.retry(task.id)).status is Status.QUEUED
        with pytest.raises(ClientError) as refused:
            await client.cancel(later.id)  # already cancelled: a 409 with the API's message
        assert refused.value.status == 409 and "cancelled" in refused.value.message
        with pytest.raises(ClientError) as missing:
            await client.get("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404


async def test_sync_client_against_a_served_api(app: App, harness: Harness) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(app), port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # up to 10 s
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started

        def from_sync_code() -> tuple[chronoq.Task, chronoq.Task]:
            with Client(f"http://127.0.0.1:{port}") as client:
                task = client.submit({"name": "later", "delay_seconds": 60})
                return task, client.get(task.id)

        submitted, got = await asyncio.to_thread(from_sync_code)
        assert got.id == submitted.id and got.status is Status.SCHEDULED
    finally:
        server.should_exit = True
        await serving
    with pytest.raises(ClientError, match="cannot reach"):
        Client(f"http://127.0.0.1:{port}").get(submitted.id)


async def test_clients_manage_schedules_and_workers(app: App, harness: Harness) -> None:
    """Schedules (create, read, list, change, pause, resume, trigger, delete) and workers
    (list, read, drain) through the async client; a drained worker stops claiming and
    exits."""
    transport = httpx.ASGITransport(app=create_api(app))
    async with AsyncClient("http://chronoq", transport=transport) as client:
        made = await client.create_schedule(
            ScheduleCreate.model_validate(
                {"name": "nightly", "cron": "0 3 * * *", "task": {"name": "report"}}
            )
        )
        assert isinstance(made, Schedule) and made.cron == "0 3 * * *"
        assert (await client.get_schedule("nightly")).id == made.id
        page = await client.list_schedules()
        assert [s.name for s in page.items] == ["nightly"]
        changed = await client.update_schedule("nightly", ScheduleUpdate(cron="30 4 * * *"))
        assert changed.cron == "30 4 * * *" and changed.task is not None
        assert (await client.pause_schedule(made.id)).paused
        assert not (await client.resume_schedule(made.id)).paused
        fired = await client.trigger_schedule("nightly")
        assert fired.name == "report" and fired.schedule_id == made.id
        await client.delete_schedule("nightly")
        with pytest.raises(ClientError) as gone:
            await client.get_schedule("nightly")
        assert gone.value.status == 404
        with pytest.raises(ClientError) as bad:
            await client.create_schedule({"name": "broken", "cron": "not a cron"})
        assert bad.value.status == 422

        worker = harness.start_worker(worker_id="w-client")

        async def registered() -> bool:
            return any(w.id == "w-client" for w in await client.workers())

        await until(registered, "the worker never registered")
        assert (await client.get_worker("w-client")).status == "alive"
        assert (await client.drain_worker("w-client")).control == "drain"
        job = next(j for w, j in harness.workers if w is worker)
        await asyncio.wait_for(asyncio.shield(job), 15)  # it acts at its next heartbeat
        assert (await client.get_worker("w-client")).status == "stopped"
        assert "w-client" not in {w.id for w in await client.workers()}
        assert "w-client" in {w.id for w in await client.workers(include_gone=True)}
        with pytest.raises(ClientError) as unknown:
            await client.stop_worker("w-nobody")
        assert unknown.value.status == 404
