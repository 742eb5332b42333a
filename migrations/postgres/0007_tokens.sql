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
