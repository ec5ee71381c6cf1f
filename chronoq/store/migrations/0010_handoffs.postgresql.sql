-- Hand-offs: a worker offers its free slots here, and a task submitted on its own is
-- inserted straight into a live offer's hands: 'running', attempt 1 open, leased to that
-- worker, and the row itself sent on the worker's own channel (chronoq.notify.
-- worker_channel). The worker starts it on receipt, without a claim round trip.
-- ``slots``: each claim sets it (in the same statement) to what the claim left free, each
-- hand-off takes one, each completion the worker records gives one back. ``pid`` is the
-- worker's LISTEN backend: an offer whose listener is gone (the worker died) is never taken.
CREATE TABLE offers (
    worker_id     TEXT PRIMARY KEY,
    queues        TEXT[] NOT NULL,
    slots         INTEGER NOT NULL,
    lease_seconds DOUBLE PRECISION NOT NULL,
    pid           INTEGER NOT NULL
);

CREATE OR REPLACE FUNCTION chronoq_wakeup() RETURNS trigger AS $$
DECLARE
    message TEXT;
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('chronoq_ready', NEW.queue);
    ELSIF NEW.status IN ('scheduled', 'failed') THEN
        PERFORM pg_notify('chronoq_schedule', '');
    ELSIF NEW.status = 'cancelled' AND TG_OP = 'UPDATE' AND OLD.status = 'running' THEN
        PERFORM pg_notify('chronoq_cancel', NEW.id);
    ELSIF NEW.status = 'running' AND TG_OP = 'INSERT' THEN  -- handed off
        INSERT INTO attempts (task_id, attempt, worker_id, started_at)
            VALUES (NEW.id, NEW.attempts, NEW.worker_id, NEW.updated_at);
        message := row_to_json(NEW)::text;
        IF octet_length(message) > 7900 THEN  -- NOTIFY payloads stop at 8000 bytes
            message := NEW.id;
        END IF;
        PERFORM pg_notify('chronoq_w_' || left(md5(NEW.worker_id), 24), message);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
