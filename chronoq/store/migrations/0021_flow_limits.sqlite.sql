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

-- Concurrency limits (chronoq.store.limits): a task with a concurrency_key runs only while
-- fewer than its concurrency_limit tasks of that key are running, in any queue, on any
-- worker. Keyed tasks leave tasks_ready (the plain claim walks only unkeyed ones, at the
-- same cost as before) for tasks_limited, which the limited claim walks key by key.
ALTER TABLE tasks ADD COLUMN concurrency_key TEXT;
ALTER TABLE tasks ADD COLUMN concurrency_limit INTEGER;
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id)
    WHERE status = 'queued' AND concurrency_key IS NULL;
CREATE INDEX tasks_limited ON tasks (queue, concurrency_key, priority DESC, run_at, id)
    WHERE status = 'queued' AND concurrency_key IS NOT NULL;
-- "how many of key k run now": the slots a key holds, a crashed worker's until the lease
-- reaper ends its attempt
CREATE INDEX tasks_key_running ON tasks (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
-- the queues that have ever had a keyed task: only their workers run the limited claim
CREATE TABLE limited_queues (
    queue     TEXT PRIMARY KEY,
    marked_at DOUBLE PRECISION NOT NULL
);
-- every insert path (API, schedules, workflows, bulk) marks the queue of a keyed task
CREATE TRIGGER tasks_limited_queue AFTER INSERT ON tasks
    WHEN NEW.concurrency_key IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO limited_queues (queue, marked_at) VALUES (NEW.queue, NEW.created_at);
END;

-- Rate limits (chronoq.store.limits.spaced): a task with a rate gets its run time from its
-- key's bucket, GCRA's theoretical arrival time (tat): each submission takes the next
-- max(tat, now) and moves tat on by the rate's interval, in the submission's transaction;
-- started_tat is the same on the start side: the limited claim starts no task of the key
-- ahead of it (beyond a small tolerance), so late tasks cannot start in a burst
ALTER TABLE tasks ADD COLUMN rate_interval DOUBLE PRECISION;
CREATE TABLE rate_buckets (
    key         TEXT PRIMARY KEY,
    spacing     DOUBLE PRECISION NOT NULL,
    tat         DOUBLE PRECISION NOT NULL,
    started_tat DOUBLE PRECISION NOT NULL DEFAULT 0
);
