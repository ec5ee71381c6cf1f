-- Process-pool workers report how many child processes they had to replace (crashed, or
-- killed for a time or memory limit): a number that keeps growing means a crash loop.
ALTER TABLE workers ADD COLUMN child_restarts INTEGER NOT NULL DEFAULT 0;
