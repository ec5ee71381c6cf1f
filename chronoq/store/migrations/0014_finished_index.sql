-- Retention (chronoq.retention): "finished tasks of this status and queue, oldest first".
-- Only finished rows are indexed, so the hot path's writes to active tasks never touch it
-- and a purge batch is a range scan that deletes every row it reads. The leading
-- (status, queue) also lists the queues holding finished tasks with one probe per queue
-- (a loose index scan). On a large existing table, build it first without blocking writes:
--   CREATE INDEX CONCURRENTLY tasks_finished ON tasks (status, queue, updated_at, id)
--       WHERE status IN ('cancelled', 'dead', 'succeeded');
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, queue, updated_at, id)
    WHERE status IN ('cancelled', 'dead', 'succeeded');
