-- Names are unique per namespace, not across the database: two namespaces may each have a
-- schedule "nightly" and a task with idempotency key "k1", and neither learns of the
-- other's from a conflict. ON CONFLICT (namespace, idempotency_key) and
-- ON CONFLICT (namespace, name) infer these indexes.
ALTER TABLE tasks DROP CONSTRAINT tasks_idempotency_key_key;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (namespace, idempotency_key);
ALTER TABLE schedules DROP CONSTRAINT schedules_name_key;
CREATE UNIQUE INDEX schedules_name ON schedules (namespace, name);
-- listing every namespace's schedules by name (the id breaks ties between namespaces)
CREATE INDEX schedules_by_name ON schedules (name, id);
