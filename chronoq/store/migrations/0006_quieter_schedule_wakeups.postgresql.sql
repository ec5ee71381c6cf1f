-- Wake other schedulers only when a schedule's next slot moves earlier (created, resumed,
-- rule changed), not when a scheduler itself advanced it after firing.
DROP TRIGGER schedules_wakeup ON schedules;
CREATE TRIGGER schedules_wakeup_insert AFTER INSERT ON schedules
    FOR EACH ROW EXECUTE FUNCTION chronoq_schedule_wakeup();
CREATE TRIGGER schedules_wakeup_update AFTER UPDATE OF next_fire_at ON schedules
    FOR EACH ROW WHEN (NEW.next_fire_at IS NOT NULL AND
                       (OLD.next_fire_at IS NULL OR NEW.next_fire_at < OLD.next_fire_at))
    EXECUTE FUNCTION chronoq_schedule_wakeup();
