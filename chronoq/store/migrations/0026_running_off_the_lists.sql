-- Less work per claim (issue 20). A status change is never a HOT update (status is
-- indexed), so each new row version gets an entry in every index whose predicate it
-- meets. The four list indexes (GET /v1/tasks pages by status, queue, handler name and
-- namespace; bulk actions) held an entry for every version, so a claim (queued ->
-- running) entered six indexes. They now leave out running tasks: a claim enters two
-- (tasks_pkey, tasks_leases). Running tasks are few (one per busy worker slot), and a
-- page reads them from tasks_leases (chronoq.store.filters.LISTED); queries spell the
-- predicate word for word, as SQLite and PostgreSQL's generic plans need.
--
-- On a large table the four indexes are rebuilt here (a write lock while each builds);
-- to build them first without blocking writes, create each under another name with
-- CREATE INDEX CONCURRENTLY, drop the old one and rename the new one.
DROP INDEX tasks_by_status;
CREATE INDEX tasks_by_status ON tasks (status, id) WHERE status <> 'running';
DROP INDEX tasks_by_queue;
CREATE INDEX tasks_by_queue ON tasks (queue, id) WHERE status <> 'running';
DROP INDEX tasks_by_name;
CREATE INDEX tasks_by_name ON tasks (name, id) WHERE status <> 'running';
DROP INDEX tasks_by_namespace;
CREATE INDEX tasks_by_namespace ON tasks (namespace, id) WHERE status <> 'running';
