"""Paused queues: their tasks stay queued while the workers serving them stay up and run
other queues' tasks; resuming wakes those workers at once. On SQLite and PostgreSQL, with
the store broker (and its hand-offs) and with Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from chronoq import App
from chronoq.broker import Consumer
from chronoq.broker.redis import RedisBroker
from chronoq.store.postgres import PostgresStore
from chronoq.worker import Worker
from tests.conftest import Harness, make_settings, running
from tests.processes import Proc, cli, start_dev
from tests.waiting import until

BROKER_URL = "redis://127.0.0.1:6379/5"
#: workers' poll interval: far longer than any wait below, so whatever starts promptly was
#: woken by an event, not found by a poll
SLOW_POLL = 60.0


def slow_polling(db_url: str, **overrides: Any) -> App:
    settings = make_settings(db_url, **overrides)
    settings.poll_seconds = SLOW_POLL
    app = App(settings=settings)

    @app.task("record")
    def record(label: str) -> str:
        return label

    return app


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    async with running(slow_polling(db_url)) as harness:
        yield harness


async def status(h: Harness, task_id: str) -> str:
    return str((await h.get(task_id))["status"])


async def settled(h: Harness, worker: Worker) -> None:
    """Wait until ``worker`` (serving ``default``) is idle and waiting for an event; on
    PostgreSQL, offering slots for hand-offs. A claim round after its LISTEN took effect is
    what offers them, so warm-up tasks run until one did (on a busy machine the LISTEN can
    lag behind the first rounds). A completion that lands before the next claim's offer
    leaves it one short of the worker's slots (offers may lag by a few): at least one."""

    async def offered() -> bool:
        async with h.store.conn() as c:
            rows = await c.fetch("SELECT slots FROM offers WHERE worker_id = $1", worker.id)
        return bool(rows) and rows[0]["slots"] >= 1

    deadline = time.monotonic() + 20
    while True:
        task = await h.submit(name="record", payload={"label": "warm-up"})
        await h.wait_for(task["id"], "succeeded", timeout=5)
        if not isinstance(h.store, PostgresStore):
            await asyncio.sleep(0.2)  # its next claim round found nothing: it waits
            return
        try:
            await until(offered, "the worker never offered its slots", timeout=2)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


async def pause(h: Harness, queue: str, verb: str = "pause") -> dict[str, Any]:
    response = await h.http.post(f"/v1/queues/{queue}/{verb}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def queues(h: Harness) -> dict[str, dict[str, Any]]:
    return {q["queue"]: q for q in (await h.http.get("/v1/queues")).json()}


async def test_paused_queue_waits_while_others_run_and_resume_starts_it_at_once(h: Harness) -> None:
    assert (await pause(h, "slow"))["paused"] is True
    worker = h.start_worker(queues=["slow", "default"])
    await settled(h, worker)

    held = [
        await h.submit(name="record", payload={"label": f"s{i}"}, queue="slow") for i in range(3)
    ]
    # a hand-off would have inserted it running, into the idle worker's hands
    assert {t["status"] for t in held} == {"queued"}
    other = await h.submit(name="record", payload={"label": "d"})
    await h.wait_for(other["id"], "succeeded", timeout=5)
    await asyncio.sleep(0.5)  # time enough for a claim round to (wrongly) take them
    assert [await status(h, t["id"]) for t in held] == ["queued"] * 3
    assert (await queues(h))["slow"]["depth"] == 3

    assert (await pause(h, "slow", "resume"))["paused"] is False
    took = await until(lambda: _all_succeeded(h, held), "resumed tasks did not run", 5)
    assert took < 3, took  # woken, not found by the 60 s poll
    assert (await queues(h))["slow"]["paused"] is False


async def _all_succeeded(h: Harness, tasks: list[dict[str, Any]]) -> bool:
    return all([await status(h, t["id"]) == "succeeded" for t in tasks])


async def test_resume_from_another_process_wakes_workers(pg_url: str) -> None:
    """On PostgreSQL a resume written by another process reaches idle workers through the
    migration's NOTIFY (the resuming store's own hub wakes nobody here)."""
    async with running(slow_polling(pg_url)) as h:
        worker = h.start_worker(queues=["slow", "default"])
        await settled(h, worker)
        other = PostgresStore(pg_url, listen=False)
        await other.open()
        try:
            await other.pauses.pause("slow", time.time(), "test")
            task = await h.submit(name="record", payload={"label": "x"}, queue="slow")
            assert task["status"] == "queued"  # not handed off
            await asyncio.sleep(1)  # the submission's wake-ups are over: the worker waits
            assert await status(h, task["id"]) == "queued"
            assert await other.pauses.resume("slow") is True
            took = await until(lambda: _all_succeeded(h, [task]), "not woken by NOTIFY", 5)
            assert took < 3, took
        finally:
            await other.close()


async def test_listing_metrics_and_idempotence(h: Harness) -> None:
    first = await pause(h, "empty")
    again = await pause(h, "empty")
    assert again["paused_at"] == first["paused_at"]  # the first pause is kept
    listed = (await queues(h))["empty"]  # listed although it holds no task
    assert listed["paused"] is True and listed["depth"] == 0
    assert listed["paused_at"] == first["paused_at"]
    await h.submit(name="record", payload={"label": "d"})  # an active queue beside it
    text = (await h.http.get("/metrics")).text
    assert 'chronoq_queue_paused{queue="empty"} 1.0' in text
    assert 'chronoq_queue_paused{queue="default"} 0.0' in text

    assert (await pause(h, "empty", "resume"))["paused"] is False
    assert (await pause(h, "empty", "resume"))["paused"] is False  # idempotent
    assert "empty" not in await queues(h)
    bad = await h.http.post("/v1/queues/no%20spaces/pause")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


async def test_only_unscoped_keys_pause(db_url: str) -> None:
    async with running(App(settings=make_settings(db_url, auth=True))) as h:
        keys = {}
        for name, scopes, namespace in [
            ("tenant", ["write"], "acme"),
            ("reader", ["read"], None),
            ("ops", ["write"], None),
        ]:
            key, secret = await h.store.keys.create(name, scopes, namespace=namespace)
            keys[name] = (key.id, {"authorization": f"Bearer {secret}"})
        for who in ("tenant", "reader"):
            for verb in ("pause", "resume"):
                response = await h.http.post(f"/v1/queues/q/{verb}", headers=keys[who][1])
                assert response.status_code == 403, (who, verb, response.text)
                assert response.json()["error"]["code"] == "forbidden"
        ops_id, ops = keys["ops"]
        response = await h.http.post("/v1/queues/q/pause", headers=ops)
        assert response.status_code == 200 and response.json()["paused_by"] == ops_id
        listed = (await h.http.get("/v1/queues", headers=keys["tenant"][1])).json()
        assert [(q["queue"], q["paused"], q["paused_by"]) for q in listed] == [
            ("q", True, ops_id)
        ]  # a tenant sees that a shared queue is paused


@pytest.fixture
async def broker_h(db_url: str) -> AsyncIterator[Harness]:
    client = redis.from_url(BROKER_URL)
    await client.flushdb()
    await client.aclose()
    async with running(slow_polling(db_url, broker_url=BROKER_URL)) as harness:
        yield harness


async def test_redis_broker_drops_paused_messages_and_resume_republishes(broker_h: Harness) -> None:
    h = broker_h
    await pause(h, "slow")

    def make(consumer: Consumer) -> RedisBroker:
        return RedisBroker(
            BROKER_URL,
            consumer.store,
            consumer.worker_id,
            consumer.queues,
            consumer.lease_seconds,
            visibility_seconds=1.0,
        )

    worker = Worker(
        h.store, h.app.executors(), queues=["slow", "default"], broker=make, poll_seconds=0.2
    )
    job = asyncio.create_task(worker.run(drain_seconds=2))
    client = redis.from_url(BROKER_URL)
    try:
        held = [
            await h.submit(name="record", payload={"label": f"s{i}"}, queue="slow")
            for i in range(3)
        ]
        other = await h.submit(name="record", payload={"label": "d"})
        await h.wait_for(other["id"], "succeeded", timeout=10)

        async def dropped() -> bool:  # read, refused by the claim, acknowledged
            return int(await client.xlen("chronoq:q:slow:normal")) == 0

        await until(dropped, "the worker never read the paused queue's messages")
        assert [await status(h, t["id"]) for t in held] == ["queued"] * 3
        # the reconciler leaves a paused queue's tasks alone (nobody may claim them)
        assert await h.store.stale_queued(time.time() + 60, time.time()) == []

        await pause(h, "slow", "resume")  # no scheduler runs: no reconciler either
        await until(lambda: _all_succeeded(h, held), "resumed tasks were not republished", 5)
    finally:
        worker.stop()
        await job
        await client.aclose()


def test_cli_pauses_and_resumes_a_queue(tmp_path: Path, procs: list[Proc]) -> None:
    dev, url = start_dev(tmp_path, "--demo", "--queues", "default,slow")
    procs.append(dev)
    paused = cli("queues", "pause", "slow", "--url", url)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.split() == ["slow", "paused"]
    task = httpx.post(
        f"{url}/v1/tasks", json={"name": "demo.add", "queue": "slow", "payload": {"a": 1, "b": 2}}
    ).json()
    listed = cli("queues", "--url", url)  # bare `chronoq queues` still lists
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("slow"))
    assert row[2] == "1" and row[-1] == "paused", listed.stdout  # one queued
    shown = cli("queues", "ls", "--json", "--url", url)
    assert [
        q["paused"] for q in httpx.Response(200, text=shown.stdout).json() if q["queue"] == "slow"
    ] == [True]
    assert httpx.get(f"{url}/v1/tasks/{task['id']}").json()["status"] == "queued"

    resumed = cli("queues", "resume", "slow", "--url", url)
    assert resumed.returncode == 0 and resumed.stdout.split() == ["slow", "active"]
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v1/tasks/{task['id']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the resumed task never ran"
        time.sleep(0.05)
    missing = cli("queues", "pause", "--url", url)
    assert missing.returncode != 0 and "QUEUE" in missing.stderr


async def test_resume_stands_when_redis_is_down(db_url: str) -> None:
    """The re-publish after a resume is best effort: the reconciler covers it."""
    async with running(slow_polling(db_url, broker_url="redis://127.0.0.1:1/0")) as h:
        await pause(h, "slow")
        task = await h.submit(name="record", payload={"label": "x"}, queue="slow")
        assert (await pause(h, "slow", "resume"))["paused"] is False
        assert (await queues(h))["slow"]["paused"] is False
        assert await status(h, task["id"]) == "queued"
