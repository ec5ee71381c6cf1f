-- SQLite: nothing to do (in-process wake-ups); keeps version numbers aligned.
SELECT 1;
