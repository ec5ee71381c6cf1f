-- Workflows (chronoq.store.workflows): a workflow row, its nodes (tasks with workflow_id
-- set) and the edges between them. A node keeps `waiting`, the number of its parents that
-- have not succeeded; the transaction recording a parent's success decrements it, and the
-- node becomes queued when it reaches 0 (a conditioned UPDATE under the row's lock, so
-- exactly one parent's transaction enqueues it). `parents` is the node's fixed number of
-- parents: a claim reads their results only for nodes that have some.
CREATE TABLE workflows (
    id         TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    -- JSON list of the task ids whose results are the workflow's result
    outputs    TEXT NOT NULL,
    -- 1: the result is the list of the outputs' results (a group); 0: the only one's
    collect    INTEGER NOT NULL DEFAULT 0,
    size       INTEGER NOT NULL
);
CREATE INDEX workflows_by_namespace ON workflows (namespace, id);

ALTER TABLE tasks ADD COLUMN workflow_id TEXT REFERENCES workflows (id) ON DELETE CASCADE;
ALTER TABLE tasks ADD COLUMN node TEXT;
ALTER TABLE tasks ADD COLUMN parents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_by_workflow ON tasks (workflow_id, node) WHERE workflow_id IS NOT NULL;

-- parent -> child; the child receives the parent's result as keyword `arg`, or, with a
-- `position`, at that index of the list `arg` (a chord's `results`)
CREATE TABLE workflow_edges (
    parent   TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    child    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    arg      TEXT NOT NULL,
    position INTEGER,
    PRIMARY KEY (parent, child)
);
CREATE INDEX workflow_edges_by_child ON workflow_edges (child);
