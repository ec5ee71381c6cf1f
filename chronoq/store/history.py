"""Finished tasks counted per time bucket: the dashboard's history charts and
``GET /v1/history``.

A task's ``updated_at`` is when it finished once it is succeeded, dead or cancelled, so
"how many finished per minute" is a GROUP BY over a range of the ``tasks_finished``
partial index (migration 0014, ``(status, queue, updated_at, id)``). PostgreSQL 15 cannot
skip over the ``queue`` column, so the query names each (status, queue) pair: the queues
come from a loose index scan (:func:`chronoq.store.retention.finished_queues`, one probe
per queue) and each pair is one index range, read only as far as the window reaches.
That is the part of a window after the rolled-up mark (:mod:`chronoq.store.counts`);
before it the counts come from ``finished_stats``, the buckets the mark passed whole kept
in this process (:func:`_finals`). The cost follows the window's buckets and the rows
after the mark, never the rows stored.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from chronoq.states import TERMINAL, Status
from chronoq.store import counts as rollup
from chronoq.store.base import Store
from chronoq.store.retention import FINISHED, finished_queues

#: the statuses a history counts: the finished ones, in a fixed order
STATUSES: tuple[Status, ...] = tuple(sorted(TERMINAL))

#: (status, queue) pairs per statement, which bounds its parameter count
_PAIRS_PER_QUERY = 100

#: the bucket a row falls in, counted from the window's start ($1) in buckets of $3 seconds
_BUCKET = {
    "sqlite": "CAST((updated_at - $1) / $3 AS INTEGER)",  # rows are >= $1: truncation floors
    "postgresql": "CAST(floor((updated_at - $1) / $3) AS INTEGER)",
}


@dataclass(frozen=True, slots=True)
class Window:
    """Tasks that finished in ``[start, start + bucket * buckets)`` (epoch seconds),
    counted per ``bucket`` seconds; ``queue``, ``name`` and ``namespace`` narrow it."""

    start: float
    bucket: float
    buckets: int
    queue: str | None = None
    name: str | None = None
    namespace: str | None = None

    @property
    def end(self) -> float:
        return self.start + self.bucket * self.buckets


@dataclass(frozen=True, slots=True)
class BucketCount:
    """``count`` tasks of ``queue`` became ``status`` in bucket number ``bucket``."""

    status: Status
    queue: str
    bucket: int
    count: int


def tier_for(window: Window, now: float) -> int | None:
    """The coarsest ``finished_stats`` tier whose buckets fit the window's (its size
    divides the bucket size and the start) and which is still kept back to the start."""
    for tier, kept in reversed(list(zip(rollup.TIERS, rollup.KEPT, strict=True))):
        if window.bucket % tier == 0 and window.start % tier == 0 and window.start >= now - kept:
            return tier
    return None


def _stats_sql(
    window: Window, tier: int, split: float, status: Status | None, lower: float | None = None
) -> tuple[str, list[Any]]:
    """The ``finished_stats`` rows of ``window`` before ``split`` (from ``lower``, by default
    the window's start): one primary-key range."""
    start = window.start if lower is None else lower
    args: list[Any] = [tier, window.name or "", start, split]
    where = "tier = $1 AND name = $2 AND bucket >= $3 AND bucket < $4"
    for column, value in (
        ("namespace", window.namespace),
        ("queue", window.queue),
        ("status", status.value if status is not None else None),
    ):
        if value is not None:
            args.append(value)
            where += f" AND {column} = ${len(args)}"
    return where, args


async def _split(store: Store, window: Window) -> tuple[int, float, float] | None:
    """(tier, split, mark) when part of ``window`` (before ``split``) is read from
    ``finished_stats``; None when all of it comes from the tasks."""
    tier = tier_for(window, time.time())
    if tier is None:
        return None
    upto = await rollup.mark(store)
    if upto <= window.start:
        return None
    return tier, min(upto, window.end), upto


async def counts(
    store: Store, window: Window, statuses: Sequence[Status] = STATUSES
) -> list[BucketCount]:
    """Every non-zero (status, queue, bucket) count of ``window``: from ``finished_stats``
    before the mark (the buckets it passed whole kept in this process, as for
    :func:`durations`), from the ``tasks_finished`` ranges after it."""
    found: list[BucketCount] = []
    since: float | None = None
    split = await _split(store, window)
    if split is not None:
        tier, since, mark = split
        wanted = {s.value for s in statuses}

        async def read(lower: float, upper: float) -> dict[float, list[tuple[str, str, int]]]:
            return await _read_counts(store, window, tier, lower, upper)

        final, kept = await _finals(store, window, tier, mark, "counts", read)
        if final < since:
            kept.update(await read(final, since))
        for at, rows in kept.items():
            b = int((at - window.start) // window.bucket)
            found += [BucketCount(Status(st), q, b, n) for st, q, n in rows if st in wanted]
        if since >= window.end:
            return found
    pairs: list[tuple[Status, str]] = []
    for status in statuses:
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a finished status")
        queues = (
            [window.queue] if window.queue is not None else await finished_queues(store, status)
        )
        pairs += [(status, q) for q in queues]
    for first in range(0, len(pairs), _PAIRS_PER_QUERY):
        sql, args = _statement(
            store.dialect, window, pairs[first : first + _PAIRS_PER_QUERY], since=since
        )
        async with store.conn() as c:
            rows = await c.fetch(sql, *args)
        found += [
            BucketCount(Status(r["status"]), r["queue"], int(r["b"]), int(r["n"]))
            for r in rows
            if 0 <= int(r["b"]) < window.buckets  # float edges: never outside the window
        ]
    return found


async def _read_counts(
    store: Store, window: Window, tier: int, lower: float, upper: float
) -> dict[float, list[tuple[str, str, int]]]:
    """The ``finished_stats`` counts of ``[lower, upper)`` summed per window bucket (by its
    start): (status, queue, count) of every status."""
    where, args = _stats_sql(window, tier, upper, None, lower)
    async with store.conn() as c:
        rows = await c.fetch(
            f"SELECT status, queue, bucket, sum(n) AS n FROM finished_stats WHERE {where} "
            "GROUP BY status, queue, bucket",
            *args,
        )
    summed: dict[float, dict[tuple[str, str], int]] = {}
    for r in rows:
        b = int((float(r["bucket"]) - window.start) // window.bucket)
        if 0 <= b < window.buckets:
            per = summed.setdefault(window.start + b * window.bucket, {})
            key = (r["status"], r["queue"])
            per[key] = per.get(key, 0) + int(r["n"])
    return {at: [(st, q, n) for (st, q), n in per.items()] for at, per in summed.items()}


#: what each (status, queue) range of :func:`_statement` selects, and its GROUP BY
_COUNTS = ("SELECT status, queue, {b} AS b, count(*) AS n FROM tasks", " GROUP BY status, queue, b")
#: the last attempt's run time and its wait from due to started, one row per task
_TIMES = (
    "SELECT {b} AS b, a.finished_at - a.started_at AS run, a.started_at - run_at AS wait "
    "FROM tasks JOIN attempts a ON a.task_id = tasks.id AND a.attempt = tasks.attempts",
    "",
)


def _statement(
    dialect: str,
    window: Window,
    pairs: Sequence[tuple[Status, str]],
    shape: tuple[str, str] = _COUNTS,
    since: float | None = None,
) -> tuple[str, list[Any]]:
    """One UNION ALL of per-(status, queue) index ranges, shaped by ``shape``; ``since``
    starts the ranges later than the window (its buckets still count from its start)."""
    args: list[Any] = [window.start, window.end, window.bucket]
    lower = "$1"
    if since is not None:
        args.append(since)
        lower = f"${len(args)}"
    extra = ""
    for column, value in (("name", window.name), ("namespace", window.namespace)):
        if value is not None:
            args.append(value)
            extra += f" AND {column} = ${len(args)}"
    select, group = shape[0].format(b=_BUCKET[dialect]), shape[1]
    parts = []
    for status, queue in pairs:
        args += [status.value, queue]
        parts.append(
            f"{select} WHERE {FINISHED} AND status = ${len(args) - 1} "
            f"AND queue = ${len(args)} AND updated_at >= {lower} AND updated_at < $2{extra}{group}"
        )
    return " UNION ALL ".join(parts), args


#: the quantiles :func:`durations` reports
QUANTILES = (0.5, 0.95, 0.99)
#: queues one :func:`durations` statement may span (its quantiles cannot be merged)
MAX_QUEUES = 400


@dataclass(frozen=True, slots=True)
class BucketDurations:
    """Of the ``count`` tasks that succeeded in bucket ``bucket``: quantiles
    (:data:`QUANTILES`) of their last attempt's run time and of its wait (from due to
    started), in seconds."""

    bucket: int
    count: int
    run: tuple[float, ...]
    wait: tuple[float, ...]


#: a bucket's succeeded count and its run and wait quantiles
_Quantiles = tuple[int, tuple[float, ...], tuple[float, ...]]


def quantiles(values: Sequence[float], qs: Sequence[float] = QUANTILES) -> tuple[float, ...]:
    """Linear interpolation between the closest ranks, as PostgreSQL's
    ``percentile_cont``: the same numbers from both stores."""
    ordered = sorted(values)
    out = []
    for q in qs:
        at = q * (len(ordered) - 1)
        low = int(at)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (at - low))
    return tuple(out)


async def durations(store: Store, window: Window) -> list[BucketDurations]:
    """Run and wait time quantiles per bucket of the tasks that succeeded in ``window``:
    the ranges :func:`counts` reads, each row joined to its last attempt by primary key.
    PostgreSQL computes the quantiles; SQLite's rows are ranked here.

    Once part of the window lies before the mark (:mod:`chronoq.store.counts`), that part
    comes from the histograms of ``finished_stats`` and the rest is binned the same way:
    each quantile is then the middle of the histogram bin holding it (within 13 %)."""
    split = await _split(store, window)
    if split is not None:
        return await _binned(store, window, *split)
    queues = (
        [window.queue]
        if window.queue is not None
        else await finished_queues(store, Status.SUCCEEDED)
    )
    if len(queues) > MAX_QUEUES:
        raise ValueError(f"{len(queues)} queues hold finished tasks; name one (queue=)")
    if not queues:
        return []
    sql, args = _statement(store.dialect, window, [(Status.SUCCEEDED, q) for q in queues], _TIMES)
    async with store.conn() as c:
        if store.dialect != "postgresql":
            return _ranked(await c.fetch(sql, *args), window.buckets)
        quantile = f"percentile_cont(ARRAY{list(QUANTILES)}::float8[]) WITHIN GROUP"
        rows = await c.fetch(
            f"SELECT b, count(*) AS n, {quantile} (ORDER BY run) AS run, "
            f"{quantile} (ORDER BY wait) AS wait FROM ({sql}) x GROUP BY b ORDER BY b",
            *args,
        )
    return [
        BucketDurations(int(r["b"]), int(r["n"]), tuple(r["run"]), tuple(r["wait"]))
        for r in rows
        if 0 <= int(r["b"]) < window.buckets
    ]


def _ranked(rows: Sequence[Any], buckets: int) -> list[BucketDurations]:
    """Quantiles per bucket of (b, run, wait) rows, computed here (SQLite has none)."""
    grouped: dict[int, tuple[list[float], list[float]]] = {}
    for r in rows:
        b = int(r["b"])
        if 0 <= b < buckets:
            runs, waits = grouped.setdefault(b, ([], []))
            runs.append(float(r["run"]))
            waits.append(float(r["wait"]))
    return [
        BucketDurations(b, len(runs), quantiles(runs), quantiles(waits))
        for b, (runs, waits) in sorted(grouped.items())
    ]


#: window buckets whose counts or durations are known for good (see :func:`_finals`), per
#: store and per (what, tier, name, namespace, queue, bucket size, bucket phase): the most
#: recently read :data:`FINAL_KEYS` of them, each at most :data:`FINAL_BUCKETS` buckets back
_final: weakref.WeakKeyDictionary[Store, dict[tuple[Any, ...], _Known[Any]]] = (
    weakref.WeakKeyDictionary()
)
FINAL_KEYS = 64
FINAL_BUCKETS = 1440

T = TypeVar("T")


@dataclass(slots=True)
class _Known(Generic[T]):
    """What every window bucket starting in ``[lo, hi)`` (epoch seconds) holds: those with
    anything in ``found``, by start; the others had nothing."""

    lo: float
    hi: float
    found: dict[float, T] = field(default_factory=dict)


async def _finals(
    store: Store,
    window: Window,
    tier: int,
    mark: float,
    what: str,
    read: Callable[[float, float], Awaitable[dict[float, T]]],
) -> tuple[float, dict[float, T]]:
    """``(final, values)``: the window's buckets before ``final`` can no longer change, and
    ``values`` holds theirs by bucket start, read with ``read(lower, upper)`` only where
    this process does not know them yet.

    A window bucket that ends at or before the last ``tier`` bucket the mark passed whole
    is final (a move of the mark writes only the tier buckets it reaches, and retention
    leaves ``finished_stats`` alone), so it is kept (:data:`_final`): a chart read again,
    as the dashboard does every few seconds, reads only its last buckets, not the whole
    window's statistics again."""
    whole = math.floor(mark / tier) * tier  # tier buckets before it are complete
    final = window.start
    if whole > window.start:
        final += min(window.buckets, (whole - window.start) // window.bucket) * window.bucket
    if final <= window.start:
        return final, {}
    keys = _final.get(store)
    if keys is None:
        keys = _final[store] = {}
    phase = window.start % window.bucket
    key = (what, tier, window.name or "", window.namespace, window.queue, window.bucket, phase)
    known: _Known[T] | None = keys.pop(key, None)
    if known is not None and known.hi > whole:  # the mark went back (a restored backup)
        known = None
    if known is None or known.hi < window.start or known.lo > final:
        known = _Known(window.start, window.start)
        missing = [(window.start, final)]
    else:
        missing = [(a, b) for a, b in ((window.start, known.lo), (known.hi, final)) if a < b]
    for lower, upper in missing:
        known.found.update(await read(lower, upper))
    known.lo, known.hi = min(known.lo, window.start), max(known.hi, final)
    values = {at: v for at, v in known.found.items() if window.start <= at < final}
    keys[key] = known  # last: the most recently used
    while len(keys) > FINAL_KEYS:
        del keys[next(iter(keys))]
    oldest = known.hi - window.bucket * FINAL_BUCKETS  # trimmed only once read
    if known.lo < oldest:
        known.lo = oldest
        known.found = {at: v for at, v in known.found.items() if at >= oldest}
    return final, values


async def _binned(
    store: Store, window: Window, tier: int, split: float, mark: float
) -> list[BucketDurations]:
    """:func:`durations` from histograms: ``finished_stats`` before ``split`` (the final
    buckets' quantiles kept, :func:`_finals`), the tasks' own attempts after it (binned
    here)."""

    async def read(lower: float, upper: float) -> dict[float, _Quantiles]:
        merged = await _read_stats(store, window, tier, lower, upper)
        return {
            window.start + b * window.bucket: (
                stat.n,
                rollup.hist_quantiles(stat.run, QUANTILES),
                rollup.hist_quantiles(stat.wait, QUANTILES),
            )
            for b, stat in merged.items()
            if stat.run
        }

    final, kept = await _finals(store, window, tier, mark, "durations", read)
    out: dict[int, BucketDurations] = {}
    for at, (n, run, wait) in kept.items():
        b = int((at - window.start) // window.bucket)
        out[b] = BucketDurations(b, n, run, wait)
    merged = await _read_stats(store, window, tier, final, split) if final < split else {}
    if split < window.end:
        queues = (
            [window.queue]
            if window.queue is not None
            else await finished_queues(store, Status.SUCCEEDED)
        )
        for first in range(0, len(queues), _PAIRS_PER_QUERY):
            pairs = [(Status.SUCCEEDED, q) for q in queues[first : first + _PAIRS_PER_QUERY]]
            sql, args = _statement(store.dialect, window, pairs, _TIMES, since=split)
            if store.dialect == "postgresql":  # bin in the database: a row per bin
                await _bin_in_database(store, sql, args, window, merged)
                continue
            async with store.conn() as c:
                for r in await c.fetch(sql, *args):
                    b = int(r["b"])
                    if 0 <= b < window.buckets and r["run"] is not None:
                        stat = merged.setdefault(b, rollup.Stat())
                        stat.n += 1
                        stat.add(float(r["run"]), float(r["wait"]))
    for b, stat in merged.items():
        if stat.run:
            out[b] = BucketDurations(
                b,
                stat.n,
                rollup.hist_quantiles(stat.run, QUANTILES),
                rollup.hist_quantiles(stat.wait, QUANTILES),
            )
    return [out[b] for b in sorted(out)]


async def _read_stats(
    store: Store, window: Window, tier: int, lower: float, upper: float
) -> dict[int, rollup.Stat]:
    """The succeeded tasks' ``finished_stats`` of ``[lower, upper)`` merged per window
    bucket."""
    where, args = _stats_sql(window, tier, upper, Status.SUCCEEDED, lower)
    merged: dict[int, rollup.Stat] = {}
    async with store.conn() as c:
        rows = await c.fetch(
            f"SELECT bucket, n, run, wait FROM finished_stats WHERE {where}", *args
        )
    for r in rows:
        b = int((float(r["bucket"]) - window.start) // window.bucket)
        if 0 <= b < window.buckets and r["run"] is not None:
            merged.setdefault(b, rollup.Stat()).merge(rollup.Stat.of(r))
    return merged


async def _bin_in_database(
    store: Store, sql: str, args: list[Any], window: Window, merged: dict[int, rollup.Stat]
) -> None:
    """PostgreSQL: the run and wait bins (:func:`chronoq.store.counts._bin`) of ``sql``'s
    rows counted per bucket by the database, so the rows themselves never travel."""
    binned = "floor(log(greatest({0}, 1e-6)) * 10)"
    async with store.conn() as c:
        rows = await c.fetch(
            f"WITH x AS ({sql}) "
            f"SELECT b, 0 AS k, {binned.format('run')} AS bin, count(*) AS n FROM x "
            "WHERE run IS NOT NULL GROUP BY b, bin UNION ALL "
            f"SELECT b, 1 AS k, {binned.format('wait')} AS bin, count(*) AS n FROM x "
            "WHERE run IS NOT NULL GROUP BY b, bin",
            *args,
        )
    for r in rows:
        b = int(r["b"])
        if not 0 <= b < window.buckets:
            continue
        stat = merged.setdefault(b, rollup.Stat())
        hist = stat.run if r["k"] == 0 else stat.wait
        hist[int(r["bin"])] = hist.get(int(r["bin"]), 0) + int(r["n"])
        if r["k"] == 0:
            stat.n += int(r["n"])
