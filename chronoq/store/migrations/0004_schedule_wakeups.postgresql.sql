-- PostgreSQL only: wake schedulers in other processes when a schedule is added or changed.
CREATE FUNCTION chronoq_schedule_wakeup() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('chronoq', 's');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER schedules_wakeup AFTER INSERT OR UPDATE OF next_fire_at, paused ON schedules
    FOR EACH ROW EXECUTE FUNCTION chronoq_schedule_wakeup();
