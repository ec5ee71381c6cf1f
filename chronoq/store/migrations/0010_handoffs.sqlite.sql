-- SQLite: nothing to do (one process; its workers are woken in-process and claim).
SELECT 1;
