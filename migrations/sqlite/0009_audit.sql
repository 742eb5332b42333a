-- Audit log (docs/audit.md): one row per state change, appended in the same transaction as the
-- change it records; no API deletes rows (only the retention sweep, when configured).
-- token_id is the token's public id, never its secret. before/after are JSON text.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    actor       TEXT,
    token_id    TEXT,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    owner       TEXT,
    before_json TEXT,
    after_json  TEXT,
    request_id  TEXT,
    client_addr TEXT
);

CREATE INDEX audit_by_actor ON audit_log (actor, id);
CREATE INDEX audit_by_target ON audit_log (target, id);
CREATE INDEX audit_by_action ON audit_log (action, id);
CREATE INDEX audit_by_owner ON audit_log (owner, id);
CREATE INDEX audit_by_time ON audit_log (at);
