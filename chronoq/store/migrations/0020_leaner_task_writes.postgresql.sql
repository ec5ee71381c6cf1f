-- Less work per task state change (issue 20). Every status change writes a new row
-- version, and PostgreSQL adds an entry for it to every index whose predicate it meets
-- (status is indexed, so no update is HOT). Two unique indexes held an entry for every
-- task although only a few tasks have the key: now partial, so a plain task's claim and
-- completion each skip two index inserts (and the WAL for them). NULLs never conflicted
-- in them, so what they refuse is unchanged; a cron slot's INSERT names the predicate in
-- its ON CONFLICT target (chronoq.store.schedules).
DROP INDEX tasks_idempotency;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX tasks_schedule_slot;
CREATE UNIQUE INDEX tasks_schedule_slot ON tasks (schedule_id, slot)
    WHERE schedule_id IS NOT NULL;

-- The status trigger notifies only on a change to queued, scheduled, failed or cancelled
-- (chronoq_wakeup does nothing for the others): it no longer runs for each claimed or
-- finished task.
DROP TRIGGER tasks_wakeup_update ON tasks;
CREATE TRIGGER tasks_wakeup_update AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('queued', 'scheduled', 'failed', 'cancelled'))
    EXECUTE FUNCTION chronoq_wakeup();
