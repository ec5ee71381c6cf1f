"""What the ``chronoq`` commands print: aligned tables and ``key  value`` detail blocks.

Each function takes the API's JSON (dicts as the routes return them) and returns the text,
so the command only fetches and echoes; times are shown in the local time zone to the
second, ``-`` when unset. ``--json`` bypasses all of this (:func:`json_text`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

#: the task statuses in lifecycle order, the columns of ``chronoq queues``
STATUSES = ("scheduled", "queued", "running", "succeeded", "failed", "dead", "cancelled")


def json_text(value: Any) -> str:
    """``value`` as indented JSON, for ``--json``."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def when(value: str | None) -> str:
    """An ISO 8601 time from the API as local ``YYYY-MM-DD HH:MM:SS`` (``-`` if none)."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Columns padded to their widest cell, upper-case headers, no trailing spaces."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    """A detail block: keys right-aligned in 9 columns, then the value."""
    return "\n".join(f"{key:>9}  {value}" for key, value in pairs)


def compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def progress_text(progress: dict[str, Any], width: int = 20) -> str:
    """``[########------------]  40%  step 2 of 5`` for a task's latest progress."""
    value = float(progress["progress"])
    filled = round(value * width)
    message = f"  {progress['message']}" if progress.get("message") else ""
    return f"[{'#' * filled}{'-' * (width - filled)}] {value * 100:3.0f}%{message}"


def log_line(line: dict[str, Any]) -> str:
    """One captured line of ``chronoq tasks logs``: its time, stream and text."""
    stream = "" if line["stream"] in ("log", "stdout") else f"[{line['stream']}] "
    return f"{when(line['at'])}  {stream}{line['text']}"


def task_detail(task: dict[str, Any], progress: dict[str, Any] | None = None) -> str:
    """``chronoq tasks get``: the task's fields, then its attempts as a table."""
    pairs = [
        ("id", task["id"]),
        ("name", task["name"]),
        ("status", task["status"]),
        ("queue", task["queue"]),
        ("priority", str(task["priority"])),
        ("run at", when(task["run_at"])),
        ("created", when(task["created_at"])),
        ("attempts", f"{task['attempts']}/{task['max_attempts']}"),
        ("payload", compact_json(task["payload"])),
    ]
    if task.get("result") is not None:
        pairs.append(("result", compact_json(task["result"])))
    if task.get("error"):
        pairs.append(("error", task["error"]))
    if progress:
        pairs.append(("progress", progress_text(progress)))
    text = fields(pairs)
    history = task.get("attempt_history") or []
    if not history:
        return text
    rows = []
    for a in history:
        duration = "-"
        if a["finished_at"]:
            seconds = (
                datetime.fromisoformat(a["finished_at"]) - datetime.fromisoformat(a["started_at"])
            ).total_seconds()
            duration = f"{seconds:.3f}s"
        rows.append(
            [
                str(a["attempt"]),
                a["worker_id"],
                when(a["started_at"]),
                duration,
                a["outcome"] or "running",
                (a["error"] or "")[:80],
            ]
        )
    return f"{text}\n\n{table(rows, ['#', 'worker', 'started', 'took', 'outcome', 'error'])}"


def tasks_table(items: Iterable[dict[str, Any]]) -> str:
    """``chronoq tasks ls``: one row per task."""
    rows = [
        [
            t["id"],
            t["name"],
            t["status"],
            t["queue"],
            str(t["priority"]),
            f"{t['attempts']}/{t['max_attempts']}",
            when(t["run_at"]),
        ]
        for t in items
    ]
    return table(rows, ["id", "name", "status", "queue", "prio", "tries", "run at"])


def queues_table(stats: Iterable[dict[str, Any]]) -> str:
    """``chronoq queues``: the status counts of each queue and whether it is paused."""
    rows = [
        [
            q["queue"],
            *(str(q["counts"].get(s, 0)) for s in STATUSES),
            "paused" if q.get("paused") else "",
            limits_cell(q.get("limits")),
        ]
        for q in stats
    ]
    if not any(row[-1] for row in rows):  # no concurrency keys anywhere: no column
        return table([row[:-1] for row in rows], ["queue", *STATUSES, "state"])
    return table(rows, ["queue", *STATUSES, "state", "limits"])


def limits_cell(limits: dict[str, Any] | None) -> str:
    """A queue's concurrency keys and the tasks waiting on limits, in a few words."""
    if not limits:
        return ""
    keys = limits["keys_total"]
    waiting = limits["waiting_on_concurrency"] + limits["waiting_on_rate"]
    return f"{keys} key{'' if keys == 1 else 's'}" + (f", {waiting} waiting" if waiting else "")


def workers_table(workers: Iterable[dict[str, Any]]) -> str:
    """``chronoq workers ls``: queues, busy slots and heartbeat of each worker."""
    rows = [
        [
            w["id"],
            w["status"],
            ",".join(w["queues"]),
            f"{w['running']}/{w['concurrency']}",
            str(w["processed"]),
            when(w["started_at"]),
            when(w["last_seen_at"]),
        ]
        for w in workers
    ]
    return table(rows, ["id", "status", "queues", "busy", "done", "started", "last seen"])


def schedule_rule(s: dict[str, Any]) -> str:
    return str(s["cron"] or f"every {s['interval_seconds']}s")


def schedule_detail(s: dict[str, Any]) -> str:
    """``chronoq schedules get|add``: the schedule's fields and its next fire times."""
    state = "paused" if s["paused"] else ("ended" if not s["next_fire_at"] else "active")
    pairs = [
        ("id", s["id"]),
        ("name", s["name"]),
        ("rule", f"{schedule_rule(s)} ({s['timezone']})"),
        (
            ("task", f"{t['name']} {compact_json(t['payload'])} queue={t['queue']}")
            if (t := s.get("task"))
            else ("workflow", f"{s['workflow']['name']} ({len(s['workflow']['nodes'])} steps)")
        ),
        ("state", state),
        ("misfire", f"{s['misfire_policy']} (grace {s['misfire_grace_seconds']}s)"),
        ("overlap", str(s.get("overlap_policy", "allow"))),
        ("last fire", when(s["last_fire_at"])),
    ]
    if s.get("buffered_slot"):
        pairs.append(("buffered", when(s["buffered_slot"])))
    pairs += [("next" if i == 0 else "", when(t)) for i, t in enumerate(s["next_fire_times"])]
    return fields(pairs)


def schedules_table(items: Iterable[dict[str, Any]]) -> str:
    """``chronoq schedules ls``: rule, task and next/last fire time of each schedule."""
    rows = [
        [
            s["name"],
            schedule_rule(s),
            s["timezone"],
            s["task"]["name"] if s.get("task") else f"workflow {s['workflow']['name']}",
            "paused" if s["paused"] else "active",
            when(s["next_fire_at"]),
            when(s["last_fire_at"]),
        ]
        for s in items
    ]
    return table(rows, ["name", "rule", "tz", "task", "state", "next", "last"])


def keys_table(keys: Iterable[dict[str, Any]]) -> str:
    """``chronoq keys ls``: the keys as ``keys ls --json`` lists them, never a secret."""
    rows = [
        [
            k["id"],
            k["name"],
            ",".join(k["scopes"]),
            k["namespace"] or "*",
            "revoked" if k["revoked"] else "active",
        ]
        for k in keys
    ]
    return table(rows, ["id", "name", "scopes", "namespace", "state"])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def workflows_table(items: Iterable[dict[str, Any]]) -> str:
    """``chronoq workflows ls``: each workflow's status and steps per status."""
    rows = [
        [
            w["id"],
            w["name"],
            w["status"],
            str(w["size"]),
            _counts(w["counts"]),
            when(w["created_at"]),
        ]
        for w in items
    ]
    return table(rows, ["id", "name", "status", "steps", "by status", "started"])


def workflow_detail(w: dict[str, Any]) -> str:
    """``chronoq workflows get|start|cancel``: the workflow, then one line per step."""
    pairs = [
        ("id", w["id"]),
        ("name", w["name"]),
        ("status", w["status"] + (f" ({w['error']})" if w.get("error") else "")),
        ("steps", f"{w['size']}: {_counts(w['counts'])}"),
        ("started", when(w["created_at"])),
        ("ended", when(w.get("finished_at"))),
    ]
    if w.get("deadline"):
        pairs.append(("deadline", when(w["deadline"])))
    if w.get("schedule_id"):
        pairs.append(("schedule", w["schedule_id"]))
    text = fields(pairs)
    nodes = w.get("nodes") or []
    if nodes:
        rows = [
            [n["id"], n["name"], n["status"], str(n["attempts"]), ",".join(n["parents"]) or "-",
             n["task_id"]]
            for n in nodes
        ]  # fmt: skip
        text += "\n\n" + table(rows, ["step", "task", "status", "tries", "after", "task id"])
    return text
