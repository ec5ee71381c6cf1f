"""PostgreSQL-only behaviour: cross-process wake-ups survive a lost LISTEN connection."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from chronoq.models import TaskCreate
from chronoq.store.postgres import PostgresStore
from tests.conftest import PG_URL


async def test_listen_connection_is_restored_after_it_is_killed(pg_url: str) -> None:
    listener = PostgresStore(pg_url)
    writer = PostgresStore(pg_url, listen=False)
    await listener.open()
    await listener.migrate()
    await writer.open()
    try:
        old_pid = listener.listener_pid
        admin = await asyncpg.connect(PG_URL)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        deadline = time.monotonic() + 5
        while listener.listener_pid in (old_pid, None) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert listener.listener_pid not in (old_pid, None), "LISTEN was not restored"

        woken = listener.hub.schedule_event()
        woken.clear()
        await writer.create_task(TaskCreate(name="x", delay_seconds=60), time.time())
        await asyncio.wait_for(woken.wait(), 2)  # the other process's INSERT woke us
    finally:
        await writer.close()
        await listener.close()
