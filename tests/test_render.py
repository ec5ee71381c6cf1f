"""What the CLI prints, from the API's JSON: tables and detail blocks (chronoq/render.py)."""

from __future__ import annotations

from datetime import datetime

from chronoq import render


def local(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def test_table_pads_columns_and_strips_trailing_spaces() -> None:
    text = render.table([["a", "long value", ""], ["bbbb", "x", "z"]], ["id", "v", "last"])
    assert text.splitlines() == [
        "ID    V           LAST",
        "a     long value",
        "bbbb  x           z",
    ]
    assert render.table([], ["id", "name"]) == "ID  NAME"


def test_task_detail_lists_fields_then_attempts() -> None:
    started, finished = "2030-01-01T09:00:00+00:00", "2030-01-01T09:00:01.5+00:00"
    task = {
        "id": "t1",
        "name": "job",
        "status": "dead",
        "queue": "default",
        "priority": 5,
        "run_at": started,
        "created_at": None,
        "attempts": 1,
        "max_attempts": 1,
        "payload": {"a": 1},
        "result": None,
        "error": "boom",
        "attempt_history": [
            {
                "attempt": 1,
                "worker_id": "w1",
                "started_at": started,
                "finished_at": finished,
                "outcome": "failed",
                "error": "boom " * 40,
            }
        ],
    }
    lines = render.task_detail(task).splitlines()
    assert lines[:10] == [
        "       id  t1",
        "     name  job",
        "   status  dead",
        "    queue  default",
        " priority  5",
        f"   run at  {local(started)}",
        "  created  -",
        " attempts  1/1",
        '  payload  {"a":1}',
        "    error  boom",
    ]
    assert lines[10] == ""
    assert lines[11].split() == ["#", "WORKER", "STARTED", "TOOK", "OUTCOME", "ERROR"]
    row = lines[12]
    assert row.startswith(f"1  w1      {local(started)}  1.500s  failed   boom boom")
    assert len(row.split("failed   ", 1)[1]) == 79  # the error cut at 80, trailing space gone


def test_schedule_detail_shows_state_and_next_fire_times() -> None:
    fire = ["2030-01-02T03:00:00+00:00", "2030-01-03T03:00:00+00:00"]
    schedule = {
        "id": "s1",
        "name": "nightly",
        "cron": None,
        "interval_seconds": 300.0,
        "timezone": "UTC",
        "task": {"name": "job", "payload": {}, "queue": "q"},
        "paused": False,
        "next_fire_at": fire[0],
        "misfire_policy": "skip",
        "misfire_grace_seconds": 60.0,
        "last_fire_at": None,
        "next_fire_times": fire,
    }
    assert render.schedule_detail(schedule).splitlines()[2:] == [
        "     rule  every 300.0s (UTC)",
        "     task  job {} queue=q",
        "    state  active",
        "  misfire  skip (grace 60.0s)",
        "  overlap  allow",
        "last fire  -",
        f"     next  {local(fire[0])}",
        f"           {local(fire[1])}",
    ]
    assert "    state  ended" in render.schedule_detail({**schedule, "next_fire_at": None})
