-- Less work per completion (issue 20). An attempt row is inserted by the claim and updated
-- once by the completion, which changes no indexed column: with room left on its page
-- that update is HOT (no new attempts_pkey entry, the old version pruned in place). Only
-- pages written from now on keep the room. SQLite has no fillfactor.
ALTER TABLE attempts SET (fillfactor = 50);
