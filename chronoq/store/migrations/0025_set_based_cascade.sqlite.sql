-- PostgreSQL replaces its per-row ON DELETE CASCADE keys to tasks with one statement-level
-- trigger (see the PostgreSQL version). SQLite keeps its keys: its cascade runs inside the
-- DELETE, not as a statement per row. Nothing changes here.
SELECT 1;
