-- A task's dependent rows (attempts, logs, progress, workflow edges) go with it in one
-- statement per DELETE of tasks, not in one statement per deleted task.
--
-- The ON DELETE CASCADE foreign keys to tasks (0001, 0016, 0022) each fired a row trigger
-- per deleted task: five SPI statements per row, about three quarters of a retention
-- batch's time (EXPLAIN ANALYZE of 1,000 expired tasks: 48 of 67 ms in the five
-- "Trigger for constraint" lines). One statement-level trigger now deletes the dependents
-- of every task the statement deleted, from its transition table (an index nested loop per
-- table). Every way a task is deleted goes through it: retention, DELETE /v1/tasks, a
-- workflow's purge (the cascade from workflows is a DELETE of tasks too).
--
-- What the keys also did, and what does it now: an attempt is only inserted by the
-- statement or transaction that claims the task (its row locked, its status active, and
-- only finished tasks are ever deleted); a workflow's edges only with the workflow's new
-- tasks; logs and progress insert only while their task's row is there, locked FOR KEY
-- SHARE by the insert (chronoq.store.tasklogs), as the key's check did. A claim no longer
-- runs the key's check (a SELECT ... FOR KEY SHARE of the task per attempt it opens).
-- SQLite keeps its keys: its cascade is not a statement per row.
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_task_id_fkey;
ALTER TABLE task_logs DROP CONSTRAINT IF EXISTS task_logs_task_id_fkey;
ALTER TABLE task_progress DROP CONSTRAINT IF EXISTS task_progress_task_id_fkey;
ALTER TABLE workflow_edges DROP CONSTRAINT IF EXISTS workflow_edges_parent_fkey;
ALTER TABLE workflow_edges DROP CONSTRAINT IF EXISTS workflow_edges_child_fkey;

CREATE OR REPLACE FUNCTION chronoq_delete_dependents() RETURNS trigger AS $$
BEGIN
    DELETE FROM attempts WHERE task_id IN (SELECT id FROM gone);
    DELETE FROM task_logs WHERE task_id IN (SELECT id FROM gone);
    DELETE FROM task_progress WHERE task_id IN (SELECT id FROM gone);
    DELETE FROM workflow_edges WHERE parent IN (SELECT id FROM gone);
    DELETE FROM workflow_edges WHERE child IN (SELECT id FROM gone);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_delete_dependents AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION chronoq_delete_dependents();
