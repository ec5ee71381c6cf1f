-- Less work per task state change (issue 20): two unique indexes held an entry for every
-- task although only a few tasks have the key; now partial, so a plain task's writes skip
-- them. NULLs never conflicted in them, so what they refuse is unchanged; a cron slot's
-- INSERT names the predicate in its ON CONFLICT target (chronoq.store.schedules).
DROP INDEX tasks_idempotency;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX tasks_schedule_slot;
CREATE UNIQUE INDEX tasks_schedule_slot ON tasks (schedule_id, slot)
    WHERE schedule_id IS NOT NULL;
