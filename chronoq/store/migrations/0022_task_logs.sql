-- Task logs and progress (chronoq.store.tasklogs), apart from the task row so that the
-- completion statement never grows: what a handler logged and printed during an attempt,
-- in chunks the worker's log buffer writes every half second (``lines``: a JSON list of
-- [at, stream, text]; at most 64 KiB of text per attempt), and each task's latest progress.
-- Both go with their task (retention deletes them through the cascade).
CREATE TABLE task_logs (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    lines   TEXT NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
);

CREATE TABLE task_progress (
    task_id  TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    progress DOUBLE PRECISION NOT NULL,
    message  TEXT,
    at       DOUBLE PRECISION NOT NULL
);

-- Worker controls: the API writes 'drain' or 'stop' here and the worker reads it back with
-- its next heartbeat (works across machines, no extra round trip); ``detail`` is what the
-- worker last reported of itself (JSON: its pool's children, the tasks it runs).
ALTER TABLE workers ADD COLUMN control TEXT;
ALTER TABLE workers ADD COLUMN detail TEXT;
