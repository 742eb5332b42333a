-- Listing speed: a generation counter that every change visible in a listing bumps (the API's
-- listing cache is validated against it), and trigram indexes for search.

CREATE TABLE registry_generation (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO registry_generation (id, n) VALUES (1, 0);

-- The bump runs in the writing transaction, so a reader never sees a new number before the
-- change it stands for has committed. It serialises writers on one row; writes are short.
CREATE FUNCTION quiver_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_generation SET n = n + 1;
    RETURN NULL;
END
$$;

-- Download counts are left out on purpose: a download must not invalidate every cached listing
-- (cached pages show counts at most a few seconds old; see api/src/list_cache.rs).
CREATE TRIGGER generation_adapters
AFTER INSERT OR DELETE OR UPDATE OF owner, name, base_model, description, private, created_at, updated_at
ON adapters FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_generation();
CREATE TRIGGER generation_tags AFTER INSERT OR UPDATE OR DELETE ON adapter_tags
FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_generation();
CREATE TRIGGER generation_versions AFTER INSERT OR UPDATE OR DELETE ON versions
FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_generation();
CREATE TRIGGER generation_files AFTER INSERT OR UPDATE OR DELETE ON files
FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_generation();
CREATE TRIGGER generation_refs AFTER INSERT OR UPDATE OR DELETE ON refs
FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_generation();

-- Search: substring matches through pg_trgm (a trusted extension: a database owner may create it).
-- fastupdate = off: new rows go straight into the index. With the default pending list, a table
-- filled faster than autovacuum runs had its search planned as a sequential scan.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX adapters_search_repo ON adapters
    USING gin (lower(owner || '/' || name) gin_trgm_ops) WITH (fastupdate = off);
CREATE INDEX adapters_search_description ON adapters
    USING gin (lower(description) gin_trgm_ops) WITH (fastupdate = off);
CREATE INDEX adapters_search_base_model ON adapters
    USING gin (lower(base_model) gin_trgm_ops) WITH (fastupdate = off);
