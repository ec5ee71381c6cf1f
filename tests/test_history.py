"""``GET /v1/history``: finished tasks per time bucket (:mod:`chronoq.store.history`)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from chronoq import App
from chronoq.api.history import pick_bucket
from chronoq.states import Status
from chronoq.store import Store, create_store, opened
from chronoq.store.history import _COUNTS, _TIMES, Window, _statement, quantiles
from tests.conftest import Harness, make_settings, running

#: columns of a task row inserted by hand
_COLUMNS = (
    "id, name, queue, status, payload, run_at, created_at, updated_at, max_attempts, "
    "backoff, namespace"
)


async def finished(
    store: Store,
    at: float,
    status: str,
    n: int = 1,
    *,
    queue: str = "default",
    name: str = "job",
    namespace: str = "default",
) -> None:
    """``n`` tasks of ``status`` that finished at ``at`` (epoch seconds)."""
    rows = [
        (f"{status}-{queue}-{name}-{namespace}-{at}-{i}", name, queue, status, "{}", at, at, at)
        for i in range(n)
    ]
    async with store.tx() as c:
        await c.executemany(
            f"INSERT INTO tasks ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, '{{}}', "
            f"'{namespace}')",
            rows,
        )


def series(body: dict[str, Any]) -> dict[tuple[str, str | None], list[int]]:
    return {(s["status"], s["queue"]): s["counts"] for s in body["series"]}


async def test_a_worker_s_finished_tasks_are_counted_in_the_current_bucket(
    app: App, harness: Harness
) -> None:
    @app.task("ok")
    def ok() -> None:
        pass

    @app.task("bad")
    def bad() -> None:
        raise RuntimeError("no")

    harness.start_worker()
    good = [(await harness.submit(name="ok"))["id"] for _ in range(4)]
    lost = (await harness.submit(name="bad", max_attempts=1))["id"]
    for task_id in good:
        await harness.wait_for(task_id, "succeeded")
    await harness.wait_for(lost, "dead")
    answer = await harness.http.get("/v1/history", params={"window": "10m", "bucket": "1m"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["bucket_seconds"] == 60
    got = series(body)
    assert set(got) == {("succeeded", None), ("dead", None), ("cancelled", None)}
    assert all(len(c) == 10 for c in got.values())
    assert got[("succeeded", None)][-1] == 4 and sum(got[("succeeded", None)]) == 4
    assert got[("dead", None)][-1] == 1 and sum(got[("cancelled", None)]) == 0


async def test_buckets_queues_handlers_and_window_edges(harness: Harness) -> None:
    store = harness.store
    end = math.ceil(time.time() / 60) * 60  # the end of the current minute bucket
    await finished(store, end - 30, "succeeded", 3)  # the current bucket
    await finished(store, end - 90, "succeeded", 2, queue="mail")  # one before
    await finished(store, end - 90, "dead", 1, queue="mail", name="send")
    await finished(store, end - 170, "cancelled", 1)  # two before
    await finished(store, end - 600 - 1, "succeeded", 7)  # just outside a 10m window
    await finished(store, end - 60, "succeeded", 5, namespace="other")

    answer = await harness.http.get("/v1/history", params={"window": "10m", "bucket": "1m"})
    body = answer.json()
    assert body["start"] == _iso(end - 600) and body["end"] == _iso(end)
    got = series(body)
    assert got[("succeeded", None)][-3:] == [0, 2, 8]  # the other namespace counts too
    assert got[("dead", None)][-3:] == [0, 1, 0]
    assert got[("cancelled", None)][-3:] == [1, 0, 0]
    assert sum(got[("succeeded", None)]) == 10  # not the 7 from before the window

    per_queue = series(
        (await harness.http.get("/v1/history", params={"window": "10m", "by": "queue"})).json()
    )
    assert set(per_queue) == {("succeeded", "default"), ("succeeded", "mail"), ("dead", "mail"),
                              ("cancelled", "default")}  # fmt: skip
    assert sum(per_queue[("succeeded", "mail")]) == 2

    mail = series(
        (await harness.http.get("/v1/history", params={"window": "10m", "queue": "mail"})).json()
    )
    assert (sum(mail[("succeeded", None)]), sum(mail[("dead", None)])) == (2, 1)
    send = series(
        (await harness.http.get("/v1/history", params={"window": "10m", "name": "send"})).json()
    )
    assert (sum(send[("succeeded", None)]), sum(send[("dead", None)])) == (0, 1)

    wider = series(
        (await harness.http.get("/v1/history", params={"window": "2h", "bucket": "1h"})).json()
    )
    assert sum(wider[("succeeded", None)]) == 17
    earlier = await harness.http.get(
        "/v1/history", params={"window": "1m", "bucket": "1m", "until": _iso(end - 61)}
    )
    assert series(earlier.json())[("succeeded", None)] == [2]  # [end-120, end-60)


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"window": "soon"}, "window", "not a duration"),
        ({"window": "0"}, "window", "at least 1s"),
        ({"window": "0.5"}, "window", "at least 1s"),
        ({"window": "60d"}, "window", "at most 31d"),
        ({"bucket": "0.5"}, "bucket", "at least 1s"),
        ({"bucket": "1e300"}, "bucket", "at most the window"),
        ({"window": "1h", "bucket": "2h"}, "bucket", "at most the window"),
        ({"until": "9999-12-31T23:59:59+00:00"}, "until", "out of range"),
        ({"window": "nan"}, "window", "not a duration"),
        ({"window": "7d", "bucket": "1m"}, "bucket", "10080 buckets"),
        ({"bucket": "-1m"}, "bucket", "not a duration"),
        ({"until": "yesterday"}, "until", "neither"),
        ({"until": "99999999999d"}, "until", "out of range"),
        ({"by": "handler"}, "by", "total"),
        ({"queue": ""}, "queue", "at least 1"),
        ({"window": "1" * 40}, "window", "at most 32"),
    ],
)
async def test_bad_asks_are_422_naming_the_field(
    harness: Harness, params: dict[str, str], field: str, fragment: str
) -> None:
    answer = await harness.http.get("/v1/history", params=params)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert field in {d["field"] for d in error["details"]}, error
    assert fragment in error["message"], error


def test_automatic_buckets_give_charts_56_to_120_bars() -> None:
    assert pick_bucket(5) == 5  # a window shorter than the smallest bucket is one bucket
    assert [pick_bucket(w) for w in (900, 3600, 6 * 3600, 86400, 7 * 86400)] == [
        10,
        30,
        300,
        900,
        2 * 3600,
    ]


async def test_a_namespaced_key_counts_only_its_namespace(db_url: str) -> None:
    async with running(App(settings=make_settings(db_url, auth=True))) as secured:
        store = secured.store
        _, alpha = await store.keys.create("alpha", ["read"], namespace="alpha")
        _, admin = await store.keys.create("root", ["admin"])
        now = time.time()
        await finished(store, now - 5, "succeeded", 2, namespace="alpha")
        await finished(store, now - 5, "succeeded", 3, namespace="beta")

        async def total(secret: str | None) -> Any:
            headers = {"authorization": f"Bearer {secret}"} if secret else {}
            answer = await secured.http.get("/v1/history", headers=headers)
            if answer.status_code != 200:
                return answer.status_code
            return sum(series(answer.json())[("succeeded", None)])

        assert await total(None) == 401
        assert await total(alpha) == 2
        assert await total(admin) == 5


async def test_the_counts_read_ranges_of_the_finished_index(db_url: str) -> None:
    """Each (status, queue) is one range of ``tasks_finished``; no query scans the table."""
    async with opened(create_store(db_url)) as store:
        explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
        async with store.tx() as c:
            if store.dialect == "postgresql":  # the planner needs a table worth an index
                await c.execute(
                    f"INSERT INTO tasks ({_COLUMNS}) SELECT 'x' || g, 'job', 'q' || (g % 4), "
                    "CASE WHEN g % 3 = 0 THEN 'queued' ELSE 'succeeded' END, '{}', g, g, g, "
                    "1, '{}', 'default' FROM generate_series(1, 30000) g"
                )
                await c.execute("ANALYZE tasks")
                await c.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            window = Window(1000.0, 60.0, 60, name="job", namespace="default")
            pairs = [(Status.SUCCEEDED, "q1"), (Status.DEAD, "q2")]
            plans = []
            for shape in (_COUNTS, _TIMES):  # the counts, and the durations' join
                sql, args = _statement(store.dialect, window, pairs, shape)
                plans.append(" ".join(str(tuple(r)) for r in await c.fetch(explain + sql, *args)))
        for plan in plans:
            assert "tasks_finished" in plan, plan
            assert "SCAN tasks" not in plan and "Seq Scan on tasks" not in plan, plan


def test_quantiles_interpolate_as_percentile_cont() -> None:
    assert quantiles([4.0, 1.0, 3.0, 2.0], (0.0, 0.5, 1.0)) == (1.0, 2.5, 4.0)
    assert quantiles([7.0]) == (7.0, 7.0, 7.0)
    assert quantiles([float(i) for i in range(101)], (0.95, 0.99)) == (95.0, 99.0)


async def test_run_and_wait_quantiles_per_bucket(harness: Harness) -> None:
    store = harness.store
    end = math.ceil(time.time() / 60) * 60
    rows = []  # 10 tasks in the last bucket: ran 1..10 s, waited 0.1..1.0 s
    for i in range(1, 11):
        done = end - 20
        rows.append((f"ok-{i}", "default", done - i - i / 10, done - i, done, "succeeded"))
    rows.append(("mail-1", "mail", end - 100 - 5, end - 95, end - 90, "succeeded"))  # earlier
    rows.append(("dead-1", "default", end - 30, end - 29, end - 25, "dead"))  # not counted
    async with store.tx() as c:
        for task_id, queue, due, started, done, status in rows:
            await c.execute(
                f"INSERT INTO tasks ({_COLUMNS}, attempts) VALUES ($1, 'job', $2, $3, '{{}}', "
                "$4, $4, $5, 1, '{}', 'default', 1)",
                task_id, queue, status, due, done,
            )  # fmt: skip
            await c.execute(
                "INSERT INTO attempts (task_id, attempt, worker_id, started_at, finished_at, "
                "outcome) VALUES ($1, 1, 'w', $2, $3, $4)",
                task_id, started, done, status,
            )  # fmt: skip
    answer = await harness.http.get(
        "/v1/history/durations", params={"window": "10m", "bucket": "1m"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["quantiles"] == [0.5, 0.95, 0.99]
    last, before = body["buckets"][-1], body["buckets"][-2]
    assert last["at"] == _iso(end - 60) and last["count"] == 10
    assert [round(x, 3) for x in last["run"]] == [5.5, 9.55, 9.91]
    assert [round(x, 3) for x in last["wait"]] == [0.55, 0.955, 0.991]
    assert before["count"] == 1 and before["run"] == [5.0, 5.0, 5.0]
    assert [b["count"] for b in body["buckets"]] == [1, 10]
    mail = await harness.http.get("/v1/history/durations", params={"queue": "mail"})
    assert [b["count"] for b in mail.json()["buckets"]] == [1]
    bad = await harness.http.get("/v1/history/durations", params={"window": "99d"})
    assert bad.status_code == 422
