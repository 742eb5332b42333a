-- Protected aliases (docs/protected-aliases.md): only admins of the adapter's namespace may
-- create, move or delete an alias whose name is listed here. Protection belongs to the name, not
-- to the ref row, so it survives the alias being moved or deleted; it goes with the adapter.
CREATE TABLE protected_aliases (
    adapter_id  BIGINT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT,
    PRIMARY KEY (adapter_id, name)
);

-- Adapter views show protected names: a change invalidates cached listings and pages
-- (the registry generation of migration 0002).
CREATE TRIGGER generation_protected_aliases AFTER INSERT OR UPDATE OR DELETE ON protected_aliases
FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_generation();
