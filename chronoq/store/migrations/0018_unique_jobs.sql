-- Unique jobs (chronoq.store.uniqueness): a submission with ``unique_for`` carries a key
-- (its name and canonical payload, or the caller's ``unique_key``) and the end of its
-- window. While a task holding a key is waiting or running, no other task in its namespace
-- can hold it: a second submission conflicts here and returns the first. The index is
-- partial over the unfinished statuses, so a finished task gives its key back by itself;
-- one whose window ended is let go by clearing its key (the submission that found it).
ALTER TABLE tasks ADD COLUMN unique_key TEXT;
ALTER TABLE tasks ADD COLUMN unique_until DOUBLE PRECISION;
CREATE UNIQUE INDEX tasks_unique ON tasks (namespace, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running', 'failed');
