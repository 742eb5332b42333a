-- Merge and compression jobs (the queue), and the lineage of the versions they publish.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,             -- uuid
    kind             TEXT NOT NULL CHECK (kind IN ('merge', 'compress', 'embed')),
    spec             TEXT NOT NULL,                         -- JSON, inputs pinned to revisions
    spec_sha256      TEXT NOT NULL,                         -- of the request as sent (idempotency)
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    progress_done    BIGINT NOT NULL DEFAULT 0,
    progress_total   BIGINT NOT NULL DEFAULT 0,
    attempts         BIGINT NOT NULL DEFAULT 0,             -- claims that counted
    max_attempts     BIGINT NOT NULL DEFAULT 3,
    lease_owner      TEXT,                                  -- worker id, for people
    lease_token      TEXT,                                  -- fences heartbeats and publishing
    lease_expires_at BIGINT,
    run_after        BIGINT NOT NULL,                       -- retry backoff
    error            TEXT,
    result_version_id BIGINT REFERENCES versions(id) ON DELETE SET NULL,
    result_adapter   TEXT,
    result_number    BIGINT,
    report           TEXT,                                  -- JSON
    created_by       TEXT NOT NULL,
    idempotency_key  TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    UNIQUE (created_by, idempotency_key)
);
CREATE INDEX jobs_queue ON jobs (state, run_after, created_at);
CREATE INDEX jobs_creator ON jobs (created_by, created_at DESC, id DESC);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);

-- Parents of merged or compressed versions, one row per input, so lineage and derived_from are
-- queries rather than scans of JSON. The parent's name and revision stay when it is deleted.
CREATE TABLE version_parents (
    version_id        BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    position          BIGINT NOT NULL,
    parent_version_id BIGINT REFERENCES versions(id) ON DELETE SET NULL,
    parent_adapter    TEXT NOT NULL,
    parent_number     BIGINT NOT NULL,
    parent_revision   TEXT NOT NULL,
    PRIMARY KEY (version_id, position)
);
CREATE INDEX version_parents_parent ON version_parents (parent_version_id);
