-- Recurring schedules. A fired task records its schedule and nominal slot; the unique
-- index makes "one task per (schedule, slot)" a database guarantee, whatever number of
-- schedulers run.
CREATE TABLE schedules (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    cron                  TEXT,
    interval_seconds      DOUBLE PRECISION,
    timezone              TEXT NOT NULL,
    task                  TEXT NOT NULL,
    start_at              DOUBLE PRECISION,
    end_at                DOUBLE PRECISION,
    misfire_policy        TEXT NOT NULL,
    max_catch_up          INTEGER NOT NULL,
    misfire_grace_seconds DOUBLE PRECISION NOT NULL,
    jitter_seconds        DOUBLE PRECISION NOT NULL,
    paused                INTEGER NOT NULL DEFAULT 0,
    next_fire_at          DOUBLE PRECISION,
    last_fire_at          DOUBLE PRECISION,
    created_at            DOUBLE PRECISION NOT NULL,
    updated_at            DOUBLE PRECISION NOT NULL
);

-- "schedules that fire next": paused and ended schedules are not in the index at all.
CREATE INDEX schedules_due ON schedules (next_fire_at)
    WHERE paused = 0 AND next_fire_at IS NOT NULL;

ALTER TABLE tasks ADD COLUMN schedule_id TEXT;
ALTER TABLE tasks ADD COLUMN slot DOUBLE PRECISION;
CREATE UNIQUE INDEX tasks_schedule_slot ON tasks (schedule_id, slot);
