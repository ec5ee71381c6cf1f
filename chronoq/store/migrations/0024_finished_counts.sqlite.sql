-- Queue counts that cost what is active, not what is stored (chronoq.store.counts); see
-- the PostgreSQL version. SQLite has no statement-level triggers: these fire per row, and
-- only for rows leaving the counted part (deleted, or retried from dead).
CREATE TABLE finished_counts (
    namespace TEXT NOT NULL,
    queue     TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (namespace, queue, status)
);
-- The history charts' statistics (chronoq.store.history): finished tasks per time bucket
-- of `tier` seconds (10, 300, 900, 3600), written by the same move of the mark, so they too
-- cover what finished before it. Each task counts twice: under its handler `name` and
-- under '' (every handler), so a chart reads one range of the primary key with or without
-- a handler. `run` and `wait`: JSON histograms (log-spaced bins) of the succeeded ones'
-- last attempt. Append-only: retention does not take tasks out of the history.
CREATE TABLE finished_stats (
    tier      INTEGER NOT NULL,
    name      TEXT NOT NULL,
    bucket    DOUBLE PRECISION NOT NULL,
    namespace TEXT NOT NULL,
    queue     TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         BIGINT NOT NULL,
    run       TEXT,
    wait      TEXT,
    PRIMARY KEY (tier, name, bucket, namespace, queue, status)
);
CREATE TABLE finished_mark (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto DOUBLE PRECISION NOT NULL
);
INSERT INTO finished_mark (id, upto) VALUES (1, 0);

CREATE INDEX tasks_blocked ON tasks (queue, status) WHERE status IN ('blocked', 'upstream_failed');

CREATE TRIGGER tasks_uncount_deleted AFTER DELETE ON tasks
    WHEN OLD.status IN ('cancelled', 'dead', 'succeeded')
        AND OLD.updated_at < (SELECT upto FROM finished_mark WHERE id = 1)
BEGIN
    INSERT INTO finished_counts (namespace, queue, status, n)
    VALUES (OLD.namespace, OLD.queue, OLD.status, -1)
    ON CONFLICT (namespace, queue, status) DO UPDATE SET n = n - 1;
END;

CREATE TRIGGER tasks_uncount_reopened AFTER UPDATE OF status ON tasks
    WHEN OLD.status IN ('cancelled', 'dead', 'succeeded') AND NEW.status <> OLD.status
        AND OLD.updated_at < (SELECT upto FROM finished_mark WHERE id = 1)
BEGIN
    INSERT INTO finished_counts (namespace, queue, status, n)
    VALUES (OLD.namespace, OLD.queue, OLD.status, -1)
    ON CONFLICT (namespace, queue, status) DO UPDATE SET n = n - 1;
END;
