-- The handler names each worker serves (a JSON list), so the API can warn about a task no
-- live worker can run and a worker can tell "nobody has this handler" from "not me".
-- NULL: a worker from before this migration, which may serve anything.
ALTER TABLE workers ADD COLUMN handlers TEXT;
