-- Pending profiles (docs/routing.md): an embed job names the version it profiles, so that a route
-- can list the adapters still waiting for a profile with one indexed query; and a counter that
-- every change of an embed job's state bumps lets route handlers cache that list (as the registry
-- and profile generations let them cache the index). No foreign key: a job outlives its
-- version's deletion unchanged, and joins leave deleted versions out (ids are never reused).

ALTER TABLE jobs ADD COLUMN subject_version_id BIGINT;
UPDATE jobs SET subject_version_id = CAST(json_extract(spec, '$.version_id') AS INTEGER)
WHERE kind = 'embed' AND json_valid(spec);
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

-- Heartbeats and progress do not bump it: only what a pending list shows (a job's existence and
-- state) does.
CREATE TRIGGER embed_job_generation_insert AFTER INSERT ON jobs WHEN NEW.kind = 'embed'
BEGIN UPDATE embed_job_generation SET n = n + 1; END;
CREATE TRIGGER embed_job_generation_update AFTER UPDATE OF state ON jobs WHEN NEW.kind = 'embed'
BEGIN UPDATE embed_job_generation SET n = n + 1; END;
CREATE TRIGGER embed_job_generation_delete AFTER DELETE ON jobs WHEN OLD.kind = 'embed'
BEGIN UPDATE embed_job_generation SET n = n + 1; END;
