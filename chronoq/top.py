"""``chronoq top``: a live terminal view of queues, workers and throughput (like Flower's
front page, in a terminal). Polls the API; ``--once`` prints one frame (for scripts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chronoq.render import STATUSES, table


@dataclass
class Rates:
    """Succeeded and failed per second, from successive samples of the queue counts."""

    last: tuple[float, int, int] | None = None
    history: list[float] = field(default_factory=list)

    def sample(self, now: float, succeeded: int, failed: int) -> tuple[float, float]:
        rates = (0.0, 0.0)
        if self.last is not None and now > self.last[0]:
            elapsed = now - self.last[0]
            rates = (
                max(0, succeeded - self.last[1]) / elapsed,
                max(0, failed - self.last[2]) / elapsed,
            )
        self.last = (now, succeeded, failed)
        self.history = [*self.history[-59:], rates[0]]
        return rates


BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    top = max(values, default=0) or 1
    return "".join(BARS[min(8, round(v / top * 8))] for v in values)


def frame_text(
    queues: list[dict[str, Any]],
    workers: list[dict[str, Any]],
    rates: Rates,
    now: float,
    url: str,
) -> str:
    """One frame of the view, as text."""
    totals = {s: sum(q["counts"].get(s, 0) for q in queues) for s in STATUSES}
    ok, failed = rates.sample(now, totals["succeeded"], totals["failed"] + totals["dead"])
    busy = sum(w["running"] for w in workers)
    slots = sum(w["concurrency"] for w in workers)
    lines = [
        f"chronoq top — {url} — {time.strftime('%H:%M:%S', time.localtime(now))}",
        f"throughput {ok:8.1f} succeeded/s  {failed:6.1f} failed/s   {sparkline(rates.history)}",
        f"workers    {len(workers)} alive, {busy}/{slots} slots busy   "
        f"queued {totals['queued']}  running {totals['running']}  dead {totals['dead']}",
        "",
        table(
            [
                [
                    q["queue"],
                    str(q["depth"]),
                    f"{q['oldest_queued_age_seconds']:.1f}s"
                    if q.get("oldest_queued_age_seconds") is not None
                    else "-",
                    *(str(q["counts"].get(s, 0)) for s in STATUSES),
                ]
                for q in queues
            ],
            ["queue", "depth", "oldest", *STATUSES],
        ),
        "",
        table(
            [
                [
                    w["id"],
                    ",".join(w["queues"]),
                    f"{w['running']}/{w['concurrency']}",
                    str(w["processed"]),
                    f"{max(0.0, now - _ts(w['last_seen_at'])):.1f}s ago",
                ]
                for w in workers
            ],
            ["worker", "queues", "busy", "done", "heartbeat"],
        ),
    ]
    return "\n".join(lines)


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()
