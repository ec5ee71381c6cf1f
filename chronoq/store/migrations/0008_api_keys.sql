-- API keys (stored as SHA-256 of the secret, never in clear) and namespaces: a key bound to
-- a namespace sees and touches only that namespace's tasks and schedules.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    namespace    TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION,
    revoked_at   DOUBLE PRECISION
);

ALTER TABLE tasks ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE schedules ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
CREATE INDEX tasks_by_namespace ON tasks (namespace, id);
