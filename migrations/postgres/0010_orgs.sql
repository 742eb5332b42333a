-- Organisations (docs/orgs.md): a namespace is a user or an organisation, both rows of `users`
-- so the names can never collide (`kind` tells them apart; tokens and invites are made only
-- for users). Members hold a role: read, write or admin.
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'org'));
ALTER TABLE users ADD COLUMN created_by TEXT;

CREATE TABLE org_members (
    org        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    added_at   BIGINT NOT NULL,
    added_by   TEXT,
    PRIMARY KEY (org, user_name)
);
-- A token check reads the caller's organisations on every request.
CREATE INDEX org_members_by_user ON org_members (user_name, org, role);
