-- Tasks and their attempts. Times are epoch seconds (DOUBLE PRECISION), JSON is TEXT:
-- the same schema on SQLite and PostgreSQL.
CREATE TABLE tasks (
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
    idempotency_key  TEXT UNIQUE,
    worker_id        TEXT,
    lease_expires_at DOUBLE PRECISION,
    result           TEXT,
    error            TEXT
);

-- "next tasks to run in these queues": only queued rows are indexed, in claim order.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id) WHERE status = 'queued';
-- "tasks that become due next": only scheduled rows and retries waiting for their backoff.
CREATE INDEX tasks_waiting ON tasks (run_at) WHERE status IN ('scheduled', 'failed');
-- "running tasks whose worker stopped renewing its lease".
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status = 'running';
-- listing filters, newest first
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_by_queue ON tasks (queue, id);
CREATE INDEX tasks_by_name ON tasks (name, id);

CREATE TABLE attempts (
    task_id     TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
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
