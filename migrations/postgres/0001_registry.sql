-- Registry core: users, tokens, adapters, versions, files, refs.
-- Times are Unix milliseconds (BIGINT) so the same queries run on both dialects.

CREATE TABLE users (
    name        TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    user_name     TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    secret_sha256 TEXT NOT NULL UNIQUE,
    scope         TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);

CREATE TABLE adapters (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner         TEXT NOT NULL,
    name          TEXT NOT NULL,
    base_model    TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    private       BOOLEAN NOT NULL DEFAULT FALSE,
    downloads     BIGINT NOT NULL DEFAULT 0,
    next_version  BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (owner, name)
);
CREATE INDEX adapters_updated ON adapters (updated_at DESC, id DESC);
CREATE INDEX adapters_created ON adapters (created_at DESC, id DESC);
CREATE INDEX adapters_downloads ON adapters (downloads DESC, id DESC);
CREATE INDEX adapters_base_model ON adapters (base_model);

CREATE TABLE adapter_tags (
    adapter_id  BIGINT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (adapter_id, tag)
);
CREATE INDEX adapter_tags_tag ON adapter_tags (tag);

CREATE TABLE versions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    adapter_id  BIGINT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    number      BIGINT NOT NULL,
    revision    TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'failed')),
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    lora        TEXT,
    lineage     TEXT,
    UNIQUE (adapter_id, number)
);

CREATE TABLE files (
    version_id  BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE INDEX files_sha256 ON files (sha256);

CREATE TABLE refs (
    adapter_id  BIGINT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version_id  BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (adapter_id, name)
);
