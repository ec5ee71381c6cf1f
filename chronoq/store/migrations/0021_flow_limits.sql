-- Schedule overlap (chronoq.store.schedules): what a slot does while the schedule's previous
-- run is still waiting or running. 'allow' (the default, as before) fires regardless;
-- 'skip' drops the slot; 'buffer_one' keeps one slot in buffered_slot, fired once the
-- previous run ended; 'cancel_running' cancels the previous run and fires.
ALTER TABLE schedules ADD COLUMN overlap_policy TEXT NOT NULL DEFAULT 'allow';
ALTER TABLE schedules ADD COLUMN buffered_slot DOUBLE PRECISION;
-- the schedules holding a buffered slot, looked at every firing round (usually none)
CREATE INDEX schedules_buffered ON schedules (part) WHERE buffered_slot IS NOT NULL;
-- "the runs of these schedules still waiting or running" (the overlap check): only the
-- unfinished runs of schedules, however long a schedule's history is
CREATE INDEX tasks_schedule_active ON tasks (schedule_id)
    WHERE schedule_id IS NOT NULL AND status IN ('scheduled', 'queued', 'running', 'failed');
