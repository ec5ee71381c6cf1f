-- SQLite has no cross-process notifications: in-process wake-ups come from chronoq.notify,
-- other processes poll. This migration is empty on SQLite to keep version numbers aligned.
SELECT 1;
