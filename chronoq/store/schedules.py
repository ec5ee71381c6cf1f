"""Schedule queries: CRUD, pause/resume/trigger, and firing due schedules exactly once per slot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chronoq import lifecycle
from chronoq.dag import WorkflowCreate
from chronoq.ids import is_id, new_id
from chronoq.models import (
    OverlapPolicy,
    Schedule,
    ScheduleCreate,
    TaskTemplate,
    to_datetime,
)
from chronoq.recurrence import FirePlan, MisfirePolicy, Recurrence, cached, plan
from chronoq.store import workflows
from chronoq.store.leases import Fence
from chronoq.store.records import (
    INSERT_BATCH,
    INSERT_TASK,
    INSERT_TASK_COLUMNS,
    NewTask,
    Row,
    TaskRecord,
)

if TYPE_CHECKING:
    from chronoq.store.base import Store

#: fields whose change moves the next fire time
RULE_FIELDS = frozenset({"cron", "interval_seconds", "timezone", "start_at", "end_at"})


class ScheduleNotFound(LookupError):
    """No schedule has this id or name."""


class ScheduleExists(Exception):
    """A schedule with this name exists already (in the namespace it was created in)."""


class ScheduleAmbiguous(LookupError):
    """A name looked up across namespaces names a schedule in more than one of them."""

    def __init__(self, name: str, namespaces: Sequence[str]) -> None:
        super().__init__(name, namespaces)
        self.name, self.namespaces = name, list(namespaces)


def id_like(name: str) -> bool:
    """Whether ``name`` is shaped like a schedule id (a UUID, in any case). New schedules
    may not be named so: a key that looks like an id is looked up as an id, never a name."""
    return is_id(name.lower())


@dataclass(slots=True)
class ScheduleRecord:
    """A row of ``schedules``, decoded."""

    id: str
    name: str
    cron: str | None
    interval_seconds: float | None
    timezone: str
    task: TaskTemplate | None
    start_at: float | None
    end_at: float | None
    misfire_policy: MisfirePolicy
    max_catch_up: int
    misfire_grace_seconds: float
    jitter_seconds: float
    paused: bool
    next_fire_at: float | None
    last_fire_at: float | None
    created_at: float
    updated_at: float
    namespace: str = "default"
    overlap_policy: OverlapPolicy = "allow"
    #: buffer_one: a slot that waits for the previous run to end (set only by firing)
    buffered_slot: float | None = None
    #: instead of ``task``: the workflow each slot starts (migration 0023)
    workflow: WorkflowCreate | None = None

    @classmethod
    def from_row(cls, row: Row) -> ScheduleRecord:
        flow = row["workflow"]
        return cls(
            id=row["id"],
            name=row["name"],
            cron=row["cron"],
            interval_seconds=row["interval_seconds"],
            timezone=row["timezone"],
            task=None if flow else TaskTemplate.model_validate_json(row["task"]),
            start_at=row["start_at"],
            end_at=row["end_at"],
            misfire_policy=row["misfire_policy"],
            max_catch_up=row["max_catch_up"],
            misfire_grace_seconds=row["misfire_grace_seconds"],
            jitter_seconds=row["jitter_seconds"],
            paused=bool(row["paused"]),
            next_fire_at=row["next_fire_at"],
            last_fire_at=row["last_fire_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            namespace=row["namespace"],
            overlap_policy=row["overlap_policy"],
            buffered_slot=row["buffered_slot"],
            workflow=WorkflowCreate.model_validate_json(flow) if flow else None,
        )

    @classmethod
    def new(cls, spec: ScheduleCreate, now: float, namespace: str = "default") -> ScheduleRecord:
        record = cls(
            id=new_id(),
            name=spec.name,
            cron=None,
            interval_seconds=None,
            timezone="UTC",
            task=spec.task,
            start_at=None,
            end_at=None,
            misfire_policy="run_once",
            max_catch_up=1,
            misfire_grace_seconds=0,
            jitter_seconds=0,
            paused=False,
            next_fire_at=None,
            last_fire_at=None,
            created_at=now,
            updated_at=now,
            namespace=namespace,
        )
        record.apply(spec, now)
        return record

    def apply(self, spec: ScheduleCreate, now: float) -> None:
        """Take every field from ``spec`` and recompute the next fire time from ``now``."""
        self.cron, self.interval_seconds = spec.cron, spec.interval_seconds
        self.timezone, self.task, self.workflow = spec.timezone, spec.task, spec.workflow
        self.start_at = spec.start_at.timestamp() if spec.start_at else None
        self.end_at = spec.end_at.timestamp() if spec.end_at else None
        self.misfire_policy, self.max_catch_up = spec.misfire_policy, spec.max_catch_up
        self.misfire_grace_seconds = spec.misfire_grace_seconds
        self.jitter_seconds, self.paused = spec.jitter_seconds, spec.paused
        self.overlap_policy = spec.overlap_policy
        self.updated_at = now
        self.next_fire_at = None if self.paused else self.first_fire_after(now)

    def spec(self) -> ScheduleCreate:
        return ScheduleCreate(
            name=self.name,
            cron=self.cron,
            interval_seconds=self.interval_seconds,
            timezone=self.timezone,
            task=self.task,
            workflow=self.workflow,
            start_at=to_datetime(self.start_at),
            end_at=to_datetime(self.end_at),
            misfire_policy=self.misfire_policy,
            max_catch_up=self.max_catch_up,
            misfire_grace_seconds=self.misfire_grace_seconds,
            jitter_seconds=self.jitter_seconds,
            overlap_policy=self.overlap_policy,
            paused=self.paused,
        )

    def recurrence(self) -> Recurrence:
        anchor = self.start_at if self.start_at is not None else self.created_at
        return cached(self.cron, self.interval_seconds, self.timezone, anchor)

    def first_fire_after(self, t: float) -> float | None:
        """The first slot after ``t`` (and not before ``start_at``); None past ``end_at``."""
        if self.start_at is not None and t < self.start_at:
            t = self.start_at - 0.001
        slot = self.recurrence().next_after(t)
        return None if self.end_at is not None and slot > self.end_at else slot

    def plan(self, now: float, ahead: float = 0.0) -> FirePlan:
        assert self.next_fire_at is not None
        return plan(
            self.recurrence(),
            self.next_fire_at,
            now,
            policy=self.misfire_policy,
            max_catch_up=self.max_catch_up,
            grace=self.misfire_grace_seconds,
            end_at=self.end_at,
            jitter=self.jitter_seconds,
            ahead=ahead,
        )

    def values(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.name,
            self.cron,
            self.interval_seconds,
            self.timezone,
            "null" if self.task is None else self.task.model_dump_json(),
            self.start_at,
            self.end_at,
            self.misfire_policy,
            self.max_catch_up,
            self.misfire_grace_seconds,
            self.jitter_seconds,
            int(self.paused),
            self.next_fire_at,
            self.last_fire_at,
            self.created_at,
            self.updated_at,
            self.namespace,
            self.overlap_policy,
            None if self.workflow is None else self.workflow.model_dump_json(),
        )

    @property
    def cursor(self) -> str:
        """Where a listing that ends with this schedule goes on (names never hold ``/``)."""
        return f"{self.name}/{self.id}"

    def to_api(self) -> Schedule:
        upcoming: list[float] = []
        if self.next_fire_at is not None:
            upcoming = self.recurrence().upcoming(self.next_fire_at - 0.001, 5, self.end_at)
        spec = self.spec()
        return Schedule(
            **spec.model_dump(),
            id=self.id,
            namespace=self.namespace,
            next_fire_at=to_datetime(self.next_fire_at),
            last_fire_at=to_datetime(self.last_fire_at),
            buffered_slot=to_datetime(self.buffered_slot),
            next_fire_times=[to_datetime(t) for t in upcoming],
            created_at=to_datetime(self.created_at),
            updated_at=to_datetime(self.updated_at),
        )


_COLUMNS = (
    "id, name, cron, interval_seconds, timezone, task, start_at, end_at, misfire_policy, "
    "max_catch_up, misfire_grace_seconds, jitter_seconds, paused, next_fire_at, last_fire_at, "
    "created_at, updated_at, namespace, overlap_policy, workflow"
)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(_COLUMNS.split(",")) + 1))
_UPDATE = ", ".join(f"{c.strip()} = ${i}" for i, c in enumerate(_COLUMNS.split(","), 1) if i > 1)


class Schedules:
    """Schedules (``store.schedules``): they make tasks, so they are given the whole store
    (its task side and its leases), not only its connector. A dialect subclasses this to
    say how a query runs (:meth:`move`), never which."""

    def __init__(self, db: Store) -> None:
        self.db = db

    async def create(
        self, spec: ScheduleCreate, now: float, namespace: str = "default"
    ) -> ScheduleRecord:
        """A new schedule; :class:`ScheduleExists` if ``namespace`` has one of that name
        (another namespace's schedules of the same name do not matter)."""
        record = ScheduleRecord.new(spec, now, namespace)
        async with self.db.conn() as c:
            rows = await c.fetch(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
                "ON CONFLICT (namespace, name) DO NOTHING RETURNING id",
                *record.values(),
            )
        if not rows:
            raise ScheduleExists(spec.name)
        self.db.announce.scheduled()
        return record

    async def get(self, key: str, namespace: str | None = None) -> ScheduleRecord:
        """A schedule by id if ``key`` looks like one (:func:`id_like`), else by name; in
        ``namespace`` only, or in any (None): then a name several namespaces use is
        :class:`ScheduleAmbiguous`."""
        column = "id" if id_like(key) else "name"
        scope, args = ("AND namespace = $2", [namespace]) if namespace is not None else ("", [])
        async with self.db.conn() as c:
            rows = await c.fetch(
                f"SELECT * FROM schedules WHERE {column} = $1 {scope} ORDER BY namespace LIMIT 10",
                key,
                *args,
            )
        if not rows:
            raise ScheduleNotFound(key)
        if len(rows) > 1:
            raise ScheduleAmbiguous(key, [r["namespace"] for r in rows])
        return ScheduleRecord.from_row(rows[0])

    async def page(
        self, cursor: str | None = None, limit: int = 50, namespace: str | None = None
    ) -> list[ScheduleRecord]:
        """Schedules by name (then id: names repeat across namespaces); ``cursor`` is the
        :attr:`ScheduleRecord.cursor` of the previous page's last schedule (or a name)."""
        after_name, _, after_id = (cursor or "").partition("/")
        where, args = "name > $2", [limit, after_name]
        if after_id:
            where, args = "(name > $2 OR (name = $2 AND id > $3))", [*args, after_id]
        if namespace is not None:
            where += f" AND namespace = ${len(args) + 1}"
            args.append(namespace)
        async with self.db.conn() as c:
            rows = await c.fetch(
                f"SELECT * FROM schedules WHERE {where} ORDER BY name, id LIMIT $1", *args
            )
        return [ScheduleRecord.from_row(r) for r in rows]

    async def _save(self, record: ScheduleRecord) -> None:
        async with self.db.conn() as c:
            await c.execute(f"UPDATE schedules SET {_UPDATE} WHERE id = $1", *record.values())
        self.db.announce.scheduled()

    async def update(self, key: str, changes: Mapping[str, Any], now: float) -> ScheduleRecord:
        """Apply a partial update (already validated field by field); the merged schedule is
        validated again as a whole. The next fire time moves only if the rule changed."""
        record = await self.get(key)
        merged = {**record.spec().model_dump(), **changes}
        if "cron" in changes and changes["cron"] is not None:
            merged["interval_seconds"] = None
        if "interval_seconds" in changes and changes["interval_seconds"] is not None:
            merged["cron"] = None
        if changes.get("task") is not None:  # a task replaces a workflow, and back
            merged["workflow"] = None
        if changes.get("workflow") is not None:
            merged["task"] = None
        spec = ScheduleCreate.model_validate(merged)
        keep_next = record.next_fire_at
        was_paused = record.paused
        record.apply(spec, now)
        if not (RULE_FIELDS & set(changes)) and not record.paused and not was_paused:
            record.next_fire_at = keep_next
        await self._save(record)
        return record

    async def upsert(
        self, spec: ScheduleCreate, now: float, namespace: str = "default"
    ) -> tuple[ScheduleRecord, bool]:
        """Create or update the schedule named ``spec.name`` in ``namespace`` (for schedules
        declared in code). A pause set by an operator is kept. Returns
        ``(schedule, changed)``."""
        try:
            record = await self.get(spec.name, namespace)
        except ScheduleNotFound:
            try:
                return await self.create(spec, now, namespace), True
            except ScheduleExists:
                record = await self.get(spec.name, namespace)
        current = record.spec()
        wanted = spec.model_copy(update={"paused": current.paused})
        if current == wanted:
            return record, False
        changes = {k: v for k, v in wanted.model_dump().items() if current.model_dump()[k] != v}
        return await self.update(record.id, changes, now), True

    async def delete(self, key: str) -> ScheduleRecord:
        record = await self.get(key)
        async with self.db.conn() as c:
            await c.execute("DELETE FROM schedules WHERE id = $1", record.id)
        return record

    async def set_paused(self, key: str, paused: bool, now: float) -> ScheduleRecord:
        """Pause (nothing fires) or resume (the next slot after now fires; slots that fell in
        the pause are not made up)."""
        return await self.update(key, {"paused": paused}, now)

    async def trigger(self, key: str, now: float) -> TaskRecord:
        """Fire the schedule's task now, outside its rule (slot = now); a workflow
        schedule starts its workflow and returns its first node's task (whose
        ``workflow_id`` names it)."""
        record = await self.get(key)
        if record.workflow is not None:
            async with self.db.tx() as c:
                started = await workflows.create_for_slot(
                    self.db, c, record.workflow, now, record.namespace, record.id, now
                )
            assert started is not None  # a slot of now: new
            workflows.announce_started(self.db, [started], now)
            return await self.db.get_task(started.tasks[0].id)
        assert record.task is not None
        task = NewTask.of(record.task, now, now, None, record.id, now, record.namespace)
        async with self.db.conn() as c:
            rows = await c.fetch(f"{INSERT_TASK} RETURNING *", *task.values())
        self.db.inserted([task])
        return TaskRecord.from_row(rows[0])

    async def move(self, c: Any, moves: Sequence[tuple[Any, ...]]) -> None:
        """Set each fired schedule's ``(id, next_fire_at, last_fire_at, updated_at)``."""
        await c.executemany(
            "UPDATE schedules SET next_fire_at = $2, last_fire_at = $3, updated_at = $4 "
            "WHERE id = $1",
            moves,
        )

    async def fire_due(
        self,
        now: float,
        limit: int = 500,
        fence: Fence | None = None,
        owned: Sequence[Fence] | None = None,
        ahead: float = 0.0,
    ) -> int:
        """Insert the tasks of every due slot and move each schedule to its next slot, in one
        transaction. ``ahead``: also the slots due within that many seconds, their tasks
        ``scheduled`` until due (the leader promotes them then), so a burst of slots
        sharing one instant is inserted before it rather than after.
        ``ON CONFLICT (schedule_id, slot) DO NOTHING``: a slot never fires twice,
        even with several schedulers. ``owned``: only the partitions of these partition
        leases (:mod:`chronoq.partitions`), each fence checked in the transaction (None: all
        partitions). A schedule whose ``overlap_policy`` is not ``allow`` first looks at its
        runs still waiting or running (:func:`overlap`), in the same transaction; one with a
        buffered slot fires it once they ended. Returns the number of tasks inserted."""
        only = ""
        if owned is not None:
            if not owned:
                return 0
            parts = sorted({int(f.name.rpartition(":")[2]) for f in owned})
            only = f"AND part IN ({', '.join(str(p) for p in parts)}) "
        cancelled: list[TaskRecord] = []
        async with self.db.tx() as c:
            await self.db.leases.check_fence(c, fence, now)
            if owned:
                await self.db.leases.check_fences(c, owned, now)
            rows = await c.fetch(
                f"SELECT * FROM schedules WHERE paused = 0 AND next_fire_at <= $1 {only}"
                f"ORDER BY next_fire_at LIMIT $2{self.db.skip_locked}",
                now + ahead,
                limit,
            )
            due = [ScheduleRecord.from_row(row) for row in rows]
            ids = {record.id for record in due}
            waiting = [  # buffer_one slots held back, of schedules that are not due
                record
                for row in await c.fetch(
                    "SELECT * FROM schedules WHERE buffered_slot IS NOT NULL AND paused = 0 "
                    f"{only}LIMIT $1{self.db.skip_locked}",
                    limit,
                )
                if (record := ScheduleRecord.from_row(row)).id not in ids
            ]
            if not due and not waiting:
                return 0
            guarded = [
                r.id
                for r in (*due, *waiting)
                if r.overlap_policy != "allow" or r.buffered_slot is not None
            ]
            active = await self._active_runs(c, guarded) if guarded else {}
            tasks: list[NewTask] = []
            moves: list[tuple[Any, ...]] = []
            buffers: list[tuple[str, float | None]] = []
            stop: list[str] = []
            started: list[workflows.Started] = []
            for record in (*due, *waiting):
                slots: list[tuple[float, float]] = []
                if record.id in ids:
                    # an overlap policy decides on the runs of now, so its slots never fire ahead
                    fire = record.plan(now, ahead if record.overlap_policy == "allow" else 0.0)
                    slots = list(zip(fire.slots, fire.run_at, strict=True))
                    last = fire.slots[-1] if fire.slots else record.last_fire_at
                    moves.append((record.id, fire.next_fire_at, last, now))
                runs = active.get(record.id, [])
                decided = overlap(
                    record.overlap_policy, record.buffered_slot, slots, bool(runs), now
                )
                if decided.cancel:
                    stop += runs
                if decided.buffered != record.buffered_slot:
                    buffers.append((record.id, decided.buffered))
                for slot, run_at in decided.fire:
                    if record.workflow is not None:  # a slot's workflow, once per slot
                        flow = await workflows.create_for_slot(
                            self.db, c, record.workflow, now, record.namespace,
                            record.id, slot,
                        )  # fmt: skip
                        started += [flow] if flow is not None else []
                        continue
                    assert record.task is not None
                    tasks.append(
                        NewTask.of(
                            record.task, run_at, now, None, record.id, slot, record.namespace
                        )
                    )
            if stop:
                cancelled = await self._cancel_runs(c, stop, now)
            for start in range(0, len(tasks), INSERT_BATCH):
                source, args = self.db.rows_source(tasks[start : start + INSERT_BATCH])
                await c.execute(
                    f"{INSERT_TASK_COLUMNS} {source} ON CONFLICT (schedule_id, slot) "
                    "WHERE schedule_id IS NOT NULL DO NOTHING",  # the partial index (0020)
                    *args,
                )
            await self.move(c, moves)
            if buffers:
                await c.executemany(
                    "UPDATE schedules SET buffered_slot = $2 WHERE id = $1", buffers
                )
        if cancelled:
            self.db.announce.changed(cancelled, now, stopped=True)
        self.db.inserted(tasks)
        if started:
            workflows.announce_started(self.db, started, now)
        return len(tasks) + len(started)

    async def _active_runs(self, c: Any, schedule_ids: Sequence[str]) -> dict[str, list[str]]:
        """The ids of each schedule's runs still waiting or running (:data:`ACTIVE`)."""
        found = await c.fetch(
            "SELECT id, schedule_id FROM tasks WHERE schedule_id IS NOT NULL "
            f"AND schedule_id {self.db.in_list('$1')} AND {ACTIVE.where()}",
            self.db.list_param(schedule_ids),
        )
        runs: dict[str, list[str]] = {}
        for row in found:
            runs.setdefault(row["schedule_id"], []).append(row["id"])
        return runs

    async def _cancel_runs(self, c: Any, task_ids: Sequence[str], now: float) -> list[TaskRecord]:
        """cancel_running: cancel these runs (those still waiting or running); a running
        one's attempt is closed ``cancelled`` and, once committed, its worker told to stop
        (on PostgreSQL by migration 0009's trigger too)."""
        rows = await c.fetch(
            f"UPDATE tasks SET {ACTIVE.to()}, updated_at = $2, lease_expires_at = NULL "
            f"WHERE id {self.db.in_list('$1')} AND {ACTIVE.where()} RETURNING *",
            self.db.list_param(task_ids),
            now,
        )
        if rows:
            await c.execute(
                "UPDATE attempts SET finished_at = $2, outcome = 'cancelled', "
                "error = 'cancelled by the schedule''s overlap policy' "
                f"WHERE task_id {self.db.in_list('$1')} AND finished_at IS NULL",
                self.db.list_param([r["id"] for r in rows]),
                now,
            )
        return [TaskRecord.from_row(r) for r in rows]


#: a schedule's runs that count as "the previous run" for its overlap policy: those a user
#: could still cancel (waiting, queued, running, failed awaiting a retry)
ACTIVE = lifecycle.CANCEL


@dataclass(frozen=True, slots=True)
class Overlap:
    """What a firing round does with one schedule: the ``(slot, run_at)`` pairs it fires,
    whether it cancels the runs still waiting or running, and the slot it keeps buffered."""

    fire: list[tuple[float, float]]
    cancel: bool
    buffered: float | None


def overlap(
    policy: OverlapPolicy,
    buffered: float | None,
    slots: Sequence[tuple[float, float]],
    busy: bool,
    now: float,
) -> Overlap:
    """Apply ``policy`` to the due ``slots`` (``(slot, run_at)``, oldest first) and the
    slot buffered before (fired late: its run time is ``now``); ``busy``: a previous run
    still waits or runs. ``allow`` fires them all; ``skip`` fires the first only when not
    busy; ``buffer_one`` fires the first when not busy and keeps the next buffered (busy:
    keeps the oldest buffered); ``cancel_running`` cancels when busy and fires the latest."""
    pending = ([(buffered, now)] if buffered is not None else []) + list(slots)
    if policy == "allow":
        return Overlap(pending, False, None)
    if policy == "cancel_running":
        return Overlap(pending[-1:], busy and bool(pending), None)
    if policy == "skip":
        return Overlap([] if busy else pending[:1], False, None)
    if busy:
        return Overlap([], False, pending[0][0] if pending else None)
    return Overlap(pending[:1], False, pending[1][0] if len(pending) > 1 else None)
