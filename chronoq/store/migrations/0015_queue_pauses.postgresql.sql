-- Paused queues (chronoq.store.pauses): a row here and no worker claims the queue's tasks,
-- no submission is handed off to an idle worker; they stay queued. A pause is global, not
-- per namespace: queues are shared between namespaces and workers serve whole queues.
-- The claim reads it in its own statement, so a claim never races a pause check; with no
-- rows the check is one probe of an empty primary key.
CREATE TABLE queue_pauses (
    queue     TEXT PRIMARY KEY,
    paused_at DOUBLE PRECISION NOT NULL,
    paused_by TEXT
);

-- Resuming (a deleted row) wakes the queue's idle workers in every process at once, as a
-- submission does: they claim what waited.
CREATE OR REPLACE FUNCTION chronoq_resumed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('chronoq_ready', OLD.queue);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER queue_pauses_resumed AFTER DELETE ON queue_pauses
    FOR EACH ROW EXECUTE FUNCTION chronoq_resumed();
