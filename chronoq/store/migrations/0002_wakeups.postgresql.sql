-- PostgreSQL only: tell other processes (LISTEN chronoq) when work becomes ready, when a
-- task is scheduled for later and when a running task is cancelled. Identical
-- notifications in one transaction are merged, so a batch promotion sends one per queue.
CREATE FUNCTION chronoq_wakeup() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('chronoq', 'r:' || NEW.queue);
    ELSIF NEW.status IN ('scheduled', 'failed') THEN
        PERFORM pg_notify('chronoq', 's');
    ELSIF NEW.status = 'cancelled' AND TG_OP = 'UPDATE' AND OLD.status = 'running' THEN
        PERFORM pg_notify('chronoq', 'c:' || NEW.id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_wakeup_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION chronoq_wakeup();
CREATE TRIGGER tasks_wakeup_update AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION chronoq_wakeup();
