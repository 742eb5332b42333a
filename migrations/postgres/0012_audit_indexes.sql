-- Audit log indexes (docs/audit.md, "Overhead"): every index is one more write in the
-- transaction of each audited change. Kept: the filters that pick few rows out of many and the
-- namespace-scoped reading, each with `id` for the newest-first order and the cursor:
-- audit_by_actor (actor, id), audit_by_target (target, id), audit_by_owner (owner, id).
-- Dropped: audit_by_action (a handful of actions; an action filter reads newest first by id)
-- and audit_by_time (the since/until filters read newest first by id as well, and retention
-- deletes the oldest rows by id).
DROP INDEX IF EXISTS audit_by_action;
DROP INDEX IF EXISTS audit_by_time;
