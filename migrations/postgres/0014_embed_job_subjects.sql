-- Pending profiles (docs/routing.md): an embed job names the version it profiles, so that a route
-- can list the adapters still waiting for a profile with one indexed query; and a counter that
-- every change of an embed job's state bumps lets route handlers cache that list (as the registry
-- and profile generations let them cache the index). No foreign key: a job outlives its
-- version's deletion unchanged, and joins leave deleted versions out (ids are never reused).

ALTER TABLE jobs ADD COLUMN subject_version_id BIGINT;
UPDATE jobs SET subject_version_id = (spec::jsonb ->> 'version_id')::bigint WHERE kind = 'embed';
-- A version's newest embed job; embed jobs by state.
CREATE INDEX jobs_subject ON jobs (subject_version_id, created_at)
WHERE subject_version_id IS NOT NULL;
CREATE INDEX jobs_subject_state ON jobs (state, subject_version_id)
WHERE subject_version_id IS NOT NULL;

CREATE TABLE embed_job_generation (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO embed_job_generation (id, n) VALUES (1, 0);

-- Row triggers, so that only embed jobs bump it (merges, compressions and webhook deliveries do
-- not); heartbeats and progress do not either: only what a pending list shows (a job's
-- existence and state) does. The bump runs in the writing transaction.
CREATE FUNCTION quiver_bump_embed_job_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE embed_job_generation SET n = n + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER embed_job_generation_write AFTER INSERT OR UPDATE OF state ON jobs
FOR EACH ROW WHEN (NEW.kind = 'embed') EXECUTE FUNCTION quiver_bump_embed_job_generation();
CREATE TRIGGER embed_job_generation_delete AFTER DELETE ON jobs
FOR EACH ROW WHEN (OLD.kind = 'embed') EXECUTE FUNCTION quiver_bump_embed_job_generation();
