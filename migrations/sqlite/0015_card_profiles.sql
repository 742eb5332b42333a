-- Cards as profiles (docs/routing.md): a version with a model card (README.md) and no
-- samples.jsonl gets a profile from the card's text, `source = 'card'`. SQLite cannot alter a
-- CHECK constraint, so the table is rebuilt (no table references profiles; its triggers are made
-- again). A card with nothing to embed is recorded as a profile of no rows (count = 0), which
-- is never routed or shown, so that the reconciler does not look at the version again.

CREATE TABLE profiles_new (
    version_id     BIGINT PRIMARY KEY NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    embedder       TEXT NOT NULL,
    dim            BIGINT NOT NULL,
    count          BIGINT NOT NULL,                -- rows in vectors (0: a card with no text)
    source         TEXT NOT NULL CHECK (source IN ('samples', 'uploaded', 'card')),
    samples_sha256 TEXT,                           -- the samples.jsonl (or README.md) it was computed from
    vectors        BLOB NOT NULL,                   -- count × dim little-endian f32
    updated_at     BIGINT NOT NULL
);
INSERT INTO profiles_new (version_id, embedder, dim, count, source, samples_sha256, vectors, updated_at)
SELECT version_id, embedder, dim, count, source, samples_sha256, vectors, updated_at FROM profiles;
DROP TABLE profiles;
ALTER TABLE profiles_new RENAME TO profiles;
CREATE INDEX profiles_embedder ON profiles (embedder);

CREATE TRIGGER profile_generation_insert AFTER INSERT ON profiles
BEGIN UPDATE profile_generation SET n = n + 1; END;
CREATE TRIGGER profile_generation_update AFTER UPDATE ON profiles
BEGIN UPDATE profile_generation SET n = n + 1; END;
CREATE TRIGGER profile_generation_delete AFTER DELETE ON profiles
BEGIN UPDATE profile_generation SET n = n + 1; END;
UPDATE profile_generation SET n = n + 1;
