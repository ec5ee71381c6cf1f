"""The task lifecycle: every status, and every transition the code makes, in one table.

Each :class:`Transition` names the statuses it starts from and the ones it ends in. The
store's statements take their status conditions and assignments from it
(:meth:`Transition.where`, :meth:`Transition.to`), on both databases: a dialect may change
how a statement is written (PostgreSQL folds a claim into one CTE), never which statuses it
moves between. ``tests/test_lifecycle.py`` fails when task SQL spells a status itself.

=========  ==============================  =============================  ===================
name       from                            to                             made by
=========  ==============================  =============================  ===================
submit     (new)                           queued (due) or scheduled      API, schedules
plan       (new)                           queued (a root) or blocked     workflows
hand_off   (new)                           running (an idle worker's)     PostgreSQL submit
promote    scheduled, failed               queued                         scheduler
claim      queued                          running                        worker
release    running (handed, not started)   queued                         stopping worker
finish     running                         succeeded, failed, dead        worker
reap       running (lease lapsed)          failed, dead                   scheduler
cancel     scheduled, queued, running,     cancelled                      user, bulk
           failed
abandon    blocked                         cancelled                      workflow cancel
retry      failed, dead                    queued                         user, bulk
unblock    blocked (no parent unfinished)  queued                         a parent's finish
doom       blocked                         upstream_failed                a parent's death
resume     upstream_failed                 blocked                        a parent's retry
purge      succeeded, dead, cancelled      (deleted)                      user, retention
=========  ==============================  =============================  ===================

``failed`` waits for its backoff, then is promoted; ``dead`` is the dead-letter queue.
``blocked`` is a workflow node waiting for its parents (:mod:`chronoq.store.workflows`);
``upstream_failed`` one that will not run because an ancestor died or was cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    UPSTREAM_FAILED = "upstream_failed"


TERMINAL: frozenset[Status] = frozenset({Status.SUCCEEDED, Status.DEAD, Status.CANCELLED})


class InvalidTransition(Exception):
    """A task cannot move from its current status to the requested one."""

    def __init__(
        self, task_id: str, current: Status, target: Status, message: str | None = None
    ) -> None:
        super().__init__(f"task {task_id} is {current}; {message or f'it cannot become {target}'}")
        self.task_id = task_id
        self.current = current
        self.target = target


def _quoted(status: Status) -> str:
    return f"'{status.value}'"


@dataclass(frozen=True, slots=True)
class Transition:
    """One kind of status change. ``sources`` empty: it makes a new task (an INSERT);
    ``targets`` empty: it deletes the task."""

    name: str
    #: in the order the SQL spells them: the partial indexes' predicates
    #: (``tasks_waiting``, ``tasks_finished``), which SQLite matches word for word
    sources: tuple[Status, ...]
    targets: frozenset[Status]
    #: who makes it, for the docs and for a failed test to name
    by: str

    def where(self, column: str = "status") -> str:
        """SQL true of a row this transition may start from."""
        if len(self.sources) == 1:
            return f"{column} = {_quoted(self.sources[0])}"
        return f"{column} IN ({', '.join(map(_quoted, self.sources))})"

    def value(self, target: Status | None = None) -> str:
        """``target`` (default: the only target) as an SQL literal."""
        if target is None:
            (target,) = self.targets
        if target not in self.targets:
            raise ValueError(f"{self.name} cannot end in {target}")
        return _quoted(target)

    def to(self, target: Status | None = None) -> str:
        """The SQL assignment of ``target`` (default: the only target)."""
        return f"status = {self.value(target)}"

    def to_each(self, expression: str) -> str:
        """The SQL assignment of a status given per row (a parameter or a column), for
        statements whose rows end differently; callers check each with :meth:`ends_in`."""
        return f"status = {expression}"

    def ends_in(self, target: Status) -> bool:
        return target in self.targets

    def check(self, task_id: str, current: Status, target: Status | None = None) -> None:
        """Raise :class:`InvalidTransition` unless a task in ``current`` may take it."""
        if current not in self.sources:
            end = target or min(self.targets)
            raise InvalidTransition(task_id, current, end)


def _t(name: str, sources: tuple[Status, ...], targets: set[Status], by: str) -> Transition:
    return Transition(name, sources, frozenset(targets), by)


S = Status
#: a submission, a schedule's slot, or a schedule run by hand (INSERT: queued when due)
SUBMIT = _t("submit", (), {S.QUEUED, S.SCHEDULED}, "Store.create_task(s), schedules")
#: a workflow's nodes: those without parents queued, the others blocked on them
PLAN = _t("plan", (), {S.QUEUED, S.BLOCKED}, "store.workflows.create")
#: PostgreSQL: a task submitted on its own, inserted running into an idle worker's offer;
#: the trigger of migration 0010 opens its attempt and sends it to that worker
HAND_OFF = _t("hand_off", (), {S.RUNNING}, "PostgresStore._insert_on, migration 0010")
#: a scheduled task or a retry (after its backoff) comes due
PROMOTE = _t("promote", (S.SCHEDULED, S.FAILED), {S.QUEUED}, "Store.promote_due (scheduler)")
#: a worker takes queued tasks and opens an attempt each
CLAIM = _t("claim", (S.QUEUED,), {S.RUNNING}, "Store.claim, Store.claim_ids")
#: a stopping worker gives back tasks it was handed but never started (attempt undone)
RELEASE = _t("release", (S.RUNNING,), {S.QUEUED}, "Store.release")
#: an attempt's outcome: done, retried after its backoff, or dead (the dead-letter queue)
FINISH = _t("finish", (S.RUNNING,), {S.SUCCEEDED, S.FAILED, S.DEAD}, "Store.complete (worker)")
#: the lease reaper: an attempt whose worker stopped renewing its lease is ``lost``
REAP = _t("reap", (S.RUNNING,), {S.FAILED, S.DEAD}, "Store.complete(lapsed=) (scheduler)")
#: a user's cancel, one task or in bulk
CANCEL = _t(
    "cancel",
    (S.SCHEDULED, S.QUEUED, S.RUNNING, S.FAILED),
    {S.CANCELLED},
    "Store.cancel_task, store.bulk",
)
#: a cancelled workflow's nodes still waiting for their parents
ABANDON = _t("abandon", (S.BLOCKED,), {S.CANCELLED}, "store.workflows.cancel")
#: a user's retry of a failed or dead task, one or in bulk
RETRY = _t("retry", (S.FAILED, S.DEAD), {S.QUEUED}, "Store.retry_task, store.bulk")
#: a workflow node's last unfinished parent succeeded (in that parent's transaction)
UNBLOCK = _t("unblock", (S.BLOCKED,), {S.QUEUED}, "store.workflows.advance")
#: a workflow node's ancestor died or was cancelled: it will not run
DOOM = _t("doom", (S.BLOCKED,), {S.UPSTREAM_FAILED}, "store.workflows.advance")
#: the dead ancestor was retried: the node waits for its parents again
RESUME = _t("resume", (S.UPSTREAM_FAILED,), {S.BLOCKED}, "store.workflows.resume")
#: a finished task discarded by hand or by retention
PURGE = _t("purge", (S.CANCELLED, S.DEAD, S.SUCCEEDED), set(), "Store.delete_task, store.retention")
del S

#: every transition the code makes
TABLE: tuple[Transition, ...] = (
    SUBMIT,
    PLAN,
    HAND_OFF,
    PROMOTE,
    CLAIM,
    RELEASE,
    FINISH,
    REAP,
    CANCEL,
    ABANDON,
    RETRY,
    UNBLOCK,
    DOOM,
    RESUME,
    PURGE,
)


def _reached() -> dict[Status, frozenset[Status]]:
    found: dict[Status, set[Status]] = {s: set() for s in Status}
    for transition in TABLE:
        for target in transition.targets:
            found[target].update(transition.sources)
    return {target: frozenset(sources) for target, sources in found.items() if sources}


#: target status -> the statuses any transition reaches it from (derived from :data:`TABLE`)
TRANSITIONS: dict[Status, frozenset[Status]] = _reached()
#: statuses whose tasks wait for their ``run_at`` and are promoted to ``queued``
WAITING: frozenset[Status] = frozenset(PROMOTE.sources)
#: statuses a user may send back to the queue with ``retry``
RETRYABLE: frozenset[Status] = frozenset(RETRY.sources)


def sources(target: Status) -> frozenset[Status]:
    """The statuses from which some transition moves a task to ``target``."""
    return TRANSITIONS[target]


def check(task_id: str, current: Status, target: Status) -> None:
    """Raise :class:`InvalidTransition` unless some transition moves ``current`` to
    ``target``."""
    if current not in TRANSITIONS.get(target, frozenset()):
        raise InvalidTransition(task_id, current, target)


def is_(status: Status, column: str = "status") -> str:
    """SQL true of rows in ``status``, for reads (and lease renewals) that change no status."""
    return f"{column} = {_quoted(status)}"


def is_not(status: Status, column: str = "status") -> str:
    """SQL true of rows in any status but ``status`` (the list indexes' predicate)."""
    return f"{column} <> {_quoted(status)}"
