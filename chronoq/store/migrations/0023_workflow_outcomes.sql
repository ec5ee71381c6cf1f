-- Workflow outcomes (chronoq.store.workflows): a workflow's end is recorded on its row,
-- once, by the transaction that decides it: `sinks` counts its nodes without children
-- that have not succeeded (the transaction recording a sink's success decrements it and,
-- at 0, sets `outcome` 'succeeded'); a sink that dies, is cancelled or upstream_failed
-- sets 'failed' or 'cancelled'; a `deadline` passed sets 'failed' with an `error`. The
-- row's `finished_at` is when that happened (retention and the events use it); a retry
-- that revives the workflow clears them. `schedule_id`/`slot`: the schedule slot that
-- started it, unique like a task's, so a slot starts one workflow. An edge with `always`
-- lets its child run whatever its parent's end (the parent's result is then null).
ALTER TABLE workflows ADD COLUMN outcome TEXT;
ALTER TABLE workflows ADD COLUMN finished_at DOUBLE PRECISION;
ALTER TABLE workflows ADD COLUMN error TEXT;
ALTER TABLE workflows ADD COLUMN deadline DOUBLE PRECISION;
ALTER TABLE workflows ADD COLUMN sinks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workflows ADD COLUMN schedule_id TEXT;
ALTER TABLE workflows ADD COLUMN slot DOUBLE PRECISION;
CREATE UNIQUE INDEX workflows_by_slot ON workflows (schedule_id, slot);
CREATE INDEX workflows_by_deadline ON workflows (deadline)
    WHERE outcome IS NULL AND deadline IS NOT NULL;
CREATE INDEX workflows_finished ON workflows (finished_at) WHERE outcome IS NOT NULL;
ALTER TABLE workflow_edges ADD COLUMN always INTEGER NOT NULL DEFAULT 0;
-- a schedule whose slots start a workflow (its JSON spec) instead of one task
ALTER TABLE schedules ADD COLUMN workflow TEXT;

-- workflows stored before: their sinks left, and the outcome of those that ended
UPDATE workflows SET sinks = (
    SELECT count(*) FROM tasks t WHERE t.workflow_id = workflows.id
    AND t.status <> 'succeeded'
    AND NOT EXISTS (SELECT 1 FROM workflow_edges e WHERE e.parent = t.id));
UPDATE workflows SET outcome = CASE
        WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = workflows.id
            AND t.status = 'cancelled') THEN 'cancelled'
        WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = workflows.id
            AND t.status IN ('dead', 'upstream_failed')
            AND NOT EXISTS (SELECT 1 FROM workflow_edges e WHERE e.parent = t.id))
            THEN 'failed'
        WHEN sinks = 0 THEN 'succeeded' END;
UPDATE workflows SET finished_at = (
    SELECT max(updated_at) FROM tasks t WHERE t.workflow_id = workflows.id)
WHERE outcome IS NOT NULL;
