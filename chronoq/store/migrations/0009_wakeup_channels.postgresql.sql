-- One channel per kind of wake-up, so each process LISTENs only to what it needs
-- (chronoq.notify): work for a queue reaches workers only, schedule changes schedulers
-- only, and a client that only submits hears nothing. Identical notifications in one
-- transaction are still merged: a batch of inserts sends one per queue.
CREATE OR REPLACE FUNCTION chronoq_wakeup() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('chronoq_ready', NEW.queue);
    ELSIF NEW.status IN ('scheduled', 'failed') THEN
        PERFORM pg_notify('chronoq_schedule', '');
    ELSIF NEW.status = 'cancelled' AND TG_OP = 'UPDATE' AND OLD.status = 'running' THEN
        PERFORM pg_notify('chronoq_cancel', NEW.id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION chronoq_schedule_wakeup() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('chronoq_schedule', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
