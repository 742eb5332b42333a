-- Listing speed: a generation counter that every change visible in a listing bumps (the API's
-- listing cache is validated against it), and a trigram full-text index for search.

CREATE TABLE registry_generation (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO registry_generation (id, n) VALUES (1, 0);

-- Download counts are left out on purpose: a download must not invalidate every cached listing
-- (cached pages show counts at most a few seconds old; see api/src/list_cache.rs).
CREATE TRIGGER generation_adapters_insert AFTER INSERT ON adapters
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_adapters_update
AFTER UPDATE OF owner, name, base_model, description, private, created_at, updated_at ON adapters
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_adapters_delete AFTER DELETE ON adapters
BEGIN UPDATE registry_generation SET n = n + 1; END;

CREATE TRIGGER generation_tags_insert AFTER INSERT ON adapter_tags
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_tags_update AFTER UPDATE ON adapter_tags
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_tags_delete AFTER DELETE ON adapter_tags
BEGIN UPDATE registry_generation SET n = n + 1; END;

CREATE TRIGGER generation_versions_insert AFTER INSERT ON versions
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_versions_update AFTER UPDATE ON versions
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_versions_delete AFTER DELETE ON versions
BEGIN UPDATE registry_generation SET n = n + 1; END;

CREATE TRIGGER generation_files_insert AFTER INSERT ON files
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_files_update AFTER UPDATE ON files
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_files_delete AFTER DELETE ON files
BEGIN UPDATE registry_generation SET n = n + 1; END;

CREATE TRIGGER generation_refs_insert AFTER INSERT ON refs
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_refs_update AFTER UPDATE ON refs
BEGIN UPDATE registry_generation SET n = n + 1; END;
CREATE TRIGGER generation_refs_delete AFTER DELETE ON refs
BEGIN UPDATE registry_generation SET n = n + 1; END;

-- Search: substring matches on `owner/name`, description and base model through FTS5's trigram
-- tokenizer (case-insensitive). rowid = adapters.id. Terms under 3 characters scan instead.
CREATE VIRTUAL TABLE adapter_search USING fts5(repo, description, base_model, tokenize = 'trigram');
INSERT INTO adapter_search (rowid, repo, description, base_model)
    SELECT id, owner || '/' || name, description, base_model FROM adapters;

CREATE TRIGGER adapter_search_insert AFTER INSERT ON adapters
BEGIN
    INSERT INTO adapter_search (rowid, repo, description, base_model)
    VALUES (new.id, new.owner || '/' || new.name, new.description, new.base_model);
END;
CREATE TRIGGER adapter_search_update AFTER UPDATE OF owner, name, description, base_model ON adapters
BEGIN
    UPDATE adapter_search
    SET repo = new.owner || '/' || new.name, description = new.description, base_model = new.base_model
    WHERE rowid = new.id;
END;
CREATE TRIGGER adapter_search_delete AFTER DELETE ON adapters
BEGIN
    DELETE FROM adapter_search WHERE rowid = old.id;
END;
