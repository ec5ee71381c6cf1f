-- Tracing (chronoq.tracing): the W3C trace context of a task's submission, so each
-- attempt's run span is a child of the submit span across processes. NULL when the
-- submitter had no trace (tracing off). Adding a nullable column rewrites no rows.
ALTER TABLE tasks ADD COLUMN traceparent TEXT;
