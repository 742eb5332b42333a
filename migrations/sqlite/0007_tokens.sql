-- Token lifecycle (docs/tokens.md): a name, the secret's short non-secret prefix (`qvt_` and 4
-- hex characters, for telling tokens apart in listings), an optional expiry, revocation, an
-- optional restriction list (JSON array of `owner` namespaces and `owner/name` adapters; NULL:
-- unrestricted) and who made it. Tokens made before this migration have no name or prefix.

ALTER TABLE tokens ADD COLUMN name TEXT;
ALTER TABLE tokens ADD COLUMN prefix TEXT;
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_at BIGINT;
ALTER TABLE tokens ADD COLUMN restrict_to TEXT;
ALTER TABLE tokens ADD COLUMN created_by TEXT;

CREATE INDEX tokens_by_user ON tokens (user_name, created_at);

-- Invites: an admin names a user and a scope; the one-time link (`qvi_` + 64 hex, only its
-- sha256 stored) lets that user make their first token on the sign-in page.
CREATE TABLE invites (
    id            TEXT PRIMARY KEY NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    user_name     TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    scope         TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);
