-- Names are unique per namespace, not across the database (see the PostgreSQL variant).
-- SQLite cannot drop a column's UNIQUE constraint, so tasks, attempts (whose foreign key
-- names tasks) and schedules are rebuilt without it: copied into new tables, the old ones
-- dropped (attempts first, so dropping tasks cascades to nothing), the new ones renamed
-- (which points attempts' foreign key at the new tasks), and the indexes made again.
CREATE TABLE tasks_new (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    payload          TEXT NOT NULL,
    run_at           DOUBLE PRECISION NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    backoff          TEXT NOT NULL,
    timeout_seconds  DOUBLE PRECISION,
    idempotency_key  TEXT,
    worker_id        TEXT,
    lease_expires_at DOUBLE PRECISION,
    result           TEXT,
    error            TEXT,
    schedule_id      TEXT,
    slot             DOUBLE PRECISION,
    namespace        TEXT NOT NULL DEFAULT 'default'
);
INSERT INTO tasks_new (id, name, queue, status, priority, payload, run_at, created_at,
                       updated_at, attempts, max_attempts, backoff, timeout_seconds,
                       idempotency_key, worker_id, lease_expires_at, result, error,
                       schedule_id, slot, namespace)
    SELECT id, name, queue, status, priority, payload, run_at, created_at, updated_at,
           attempts, max_attempts, backoff, timeout_seconds, idempotency_key, worker_id,
           lease_expires_at, result, error, schedule_id, slot, namespace FROM tasks;

CREATE TABLE attempts_new (
    task_id     TEXT NOT NULL REFERENCES tasks_new (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    outcome     TEXT,
    result      TEXT,
    error       TEXT,
    traceback   TEXT,
    PRIMARY KEY (task_id, attempt)
);
INSERT INTO attempts_new (task_id, attempt, worker_id, started_at, finished_at, outcome,
                          result, error, traceback)
    SELECT task_id, attempt, worker_id, started_at, finished_at, outcome, result, error,
           traceback FROM attempts;

DROP TABLE attempts;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
ALTER TABLE attempts_new RENAME TO attempts;

CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id) WHERE status = 'queued';
CREATE INDEX tasks_waiting ON tasks (run_at) WHERE status IN ('scheduled', 'failed');
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_by_queue ON tasks (queue, id);
CREATE INDEX tasks_by_name ON tasks (name, id);
CREATE UNIQUE INDEX tasks_schedule_slot ON tasks (schedule_id, slot);
CREATE INDEX tasks_by_namespace ON tasks (namespace, id);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (namespace, idempotency_key);

CREATE TABLE schedules_new (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    cron                  TEXT,
    interval_seconds      DOUBLE PRECISION,
    timezone              TEXT NOT NULL,
    task                  TEXT NOT NULL,
    start_at              DOUBLE PRECISION,
    end_at                DOUBLE PRECISION,
    misfire_policy        TEXT NOT NULL,
    max_catch_up          INTEGER NOT NULL,
    misfire_grace_seconds DOUBLE PRECISION NOT NULL,
    jitter_seconds        DOUBLE PRECISION NOT NULL,
    paused                INTEGER NOT NULL DEFAULT 0,
    next_fire_at          DOUBLE PRECISION,
    last_fire_at          DOUBLE PRECISION,
    created_at            DOUBLE PRECISION NOT NULL,
    updated_at            DOUBLE PRECISION NOT NULL,
    namespace             TEXT NOT NULL DEFAULT 'default'
);
INSERT INTO schedules_new (id, name, cron, interval_seconds, timezone, task, start_at,
                           end_at, misfire_policy, max_catch_up, misfire_grace_seconds,
                           jitter_seconds, paused, next_fire_at, last_fire_at, created_at,
                           updated_at, namespace)
    SELECT id, name, cron, interval_seconds, timezone, task, start_at, end_at,
           misfire_policy, max_catch_up, misfire_grace_seconds, jitter_seconds, paused,
           next_fire_at, last_fire_at, created_at, updated_at, namespace FROM schedules;
DROP TABLE schedules;
ALTER TABLE schedules_new RENAME TO schedules;
CREATE INDEX schedules_due ON schedules (next_fire_at)
    WHERE paused = 0 AND next_fire_at IS NOT NULL;
CREATE UNIQUE INDEX schedules_name ON schedules (namespace, name);
CREATE INDEX schedules_by_name ON schedules (name, id);
