-- Events and webhooks (docs/webhooks.md): the event log, subscriptions, and the log of every
-- delivery attempt. Deliveries are jobs of kind 'webhook', so the jobs table's CHECK on kind is
-- widened: SQLite cannot alter a constraint, so the table is rebuilt (no table references
-- jobs(id), and no trigger or view names it).

CREATE TABLE jobs_new (
    id               TEXT PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('merge', 'compress', 'embed', 'webhook')),
    spec             TEXT NOT NULL,
    spec_sha256      TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_done    BIGINT NOT NULL DEFAULT 0,
    progress_total   BIGINT NOT NULL DEFAULT 0,
    attempts         BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL DEFAULT 3,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    run_after        BIGINT NOT NULL,
    error            TEXT,
    result_version_id BIGINT REFERENCES versions(id) ON DELETE SET NULL,
    result_adapter   TEXT,
    result_number    BIGINT,
    report           TEXT,
    created_by       TEXT NOT NULL,
    idempotency_key  TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    UNIQUE (created_by, idempotency_key)
);
INSERT INTO jobs_new (id, kind, spec, spec_sha256, state, cancel_requested, progress_done,
    progress_total, attempts, max_attempts, lease_owner, lease_token, lease_expires_at, run_after,
    error, result_version_id, result_adapter, result_number, report, created_by, idempotency_key,
    created_at, started_at, finished_at)
SELECT id, kind, spec, spec_sha256, state, cancel_requested, progress_done,
    progress_total, attempts, max_attempts, lease_owner, lease_token, lease_expires_at, run_after,
    error, result_version_id, result_adapter, result_number, report, created_by, idempotency_key,
    created_at, started_at, finished_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_queue ON jobs (state, run_after, created_at);
CREATE INDEX jobs_creator ON jobs (created_by, created_at DESC, id DESC);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);

-- Every event, in one global sequence (`id`): receivers order by it.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    adapter    TEXT NOT NULL,              -- owner/name
    owner      TEXT NOT NULL,
    payload    TEXT NOT NULL,              -- JSON: the body sent to subscribers
    created_at BIGINT NOT NULL
);
CREATE INDEX events_adapter ON events (adapter, id);

-- Subscriptions: one adapter (`adapter` set) or every adapter of one owner (`adapter` NULL).
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY NOT NULL,  -- uuid
    created_by TEXT NOT NULL,
    owner      TEXT NOT NULL,
    adapter    TEXT,                       -- owner/name, or NULL for the whole owner
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    events     TEXT NOT NULL,              -- JSON list of event types
    active     INTEGER NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_owner ON webhooks (owner);
CREATE INDEX webhooks_creator ON webhooks (created_by, created_at);

-- One row per delivery attempt.
CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL,        -- the job's id: the Quiver-Delivery header
    webhook_id       TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id         BIGINT NOT NULL,
    attempt          BIGINT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('delivered', 'failed', 'skipped')),
    response_code    BIGINT,
    latency_ms       BIGINT NOT NULL,
    response_excerpt TEXT,
    error            TEXT,
    at               BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id DESC);
