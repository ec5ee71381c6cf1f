-- Queue counts that cost what is active, not what is stored (chronoq.store.counts).
--
-- Finished tasks are counted in two parts: `finished_counts` holds, per namespace, queue and
-- status, the finished tasks whose `updated_at` (when they finished) is before
-- `finished_mark.upto`; the rows since the mark are counted from the `tasks_finished` index
-- when read. Nothing on the hot path writes here: the mark is moved forward off it (by a
-- reader or the scheduler leader) once enough rows piled up past it. Rows that leave the
-- counted part are subtracted by the triggers below, which fire only for them: a DELETE
-- (retention, DELETE /v1/tasks, a cascade) and a status change away from a finished status
-- (a retry of a dead task). The claim and completion UPDATEs skip the second trigger in its
-- WHEN clause, with no function call.
CREATE TABLE finished_counts (
    namespace TEXT NOT NULL,
    queue     TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         BIGINT NOT NULL,
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
-- the charts read (tier, name, bucket) ranges: from the index alone, without visiting the
-- rows (which the moves of the mark scatter over the table)
CREATE INDEX finished_stats_read ON finished_stats (tier, name, bucket)
    INCLUDE (namespace, queue, status, n);
CREATE TABLE finished_mark (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    upto DOUBLE PRECISION NOT NULL
);
-- nothing counted yet: the first move of the mark counts what is stored, once
INSERT INTO finished_mark (id, upto) VALUES (1, 0);

-- workflow nodes waiting for their parents, or never to run: the only statuses no partial
-- index held (plain tasks are never in them, so the hot path never writes this index)
CREATE INDEX tasks_blocked ON tasks (queue, status) WHERE status IN ('blocked', 'upstream_failed');

-- One statement's deleted rows, once per statement (the transition table), not per row.
-- The mark row is read FOR SHARE: a concurrent move of the mark waits for this
-- transaction, or this one for it, so no row is both counted and missed.
CREATE OR REPLACE FUNCTION chronoq_uncount_deleted() RETURNS trigger AS $$
DECLARE
    mark DOUBLE PRECISION;
BEGIN
    SELECT upto INTO mark FROM finished_mark WHERE id = 1 FOR SHARE;
    INSERT INTO finished_counts AS f (namespace, queue, status, n)
    SELECT namespace, queue, status, -count(*) FROM gone
    WHERE status IN ('cancelled', 'dead', 'succeeded') AND updated_at < mark
    GROUP BY namespace, queue, status
    ON CONFLICT (namespace, queue, status) DO UPDATE SET n = f.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_uncount_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION chronoq_uncount_deleted();

CREATE OR REPLACE FUNCTION chronoq_uncount_reopened() RETURNS trigger AS $$
DECLARE
    mark DOUBLE PRECISION;
BEGIN
    SELECT upto INTO mark FROM finished_mark WHERE id = 1 FOR SHARE;
    IF OLD.updated_at < mark THEN
        INSERT INTO finished_counts AS f (namespace, queue, status, n)
        VALUES (OLD.namespace, OLD.queue, OLD.status, -1)
        ON CONFLICT (namespace, queue, status) DO UPDATE SET n = f.n - 1;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_uncount_reopened AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (OLD.status IN ('cancelled', 'dead', 'succeeded') AND NEW.status <> OLD.status)
    EXECUTE FUNCTION chronoq_uncount_reopened();
