-- Paused queues (chronoq.store.pauses): a row here and no worker claims the queue's tasks;
-- they stay queued. Global, not per namespace (queues are shared between namespaces). A
-- resume wakes the workers in-process (one process: nothing to notify across).
CREATE TABLE queue_pauses (
    queue     TEXT PRIMARY KEY,
    paused_at DOUBLE PRECISION NOT NULL,
    paused_by TEXT
);
