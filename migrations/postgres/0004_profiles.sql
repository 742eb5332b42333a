-- Routing profiles: the normalised embeddings of a version's samples.jsonl (or one uploaded
-- vector), stored with the id of the embedder that made them, so that vectors of two embedders
-- are never searched together. pgvector is not assumed: vectors are little-endian f32 bytes.

CREATE TABLE profiles (
    version_id     BIGINT PRIMARY KEY NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    embedder       TEXT NOT NULL,
    dim            BIGINT NOT NULL,
    count          BIGINT NOT NULL,                -- rows in vectors
    source         TEXT NOT NULL CHECK (source IN ('samples', 'uploaded')),
    samples_sha256 TEXT,                           -- the samples.jsonl it was computed from
    vectors        BYTEA NOT NULL,                  -- count × dim little-endian f32
    updated_at     BIGINT NOT NULL
);
CREATE INDEX profiles_embedder ON profiles (embedder);

-- Route indexes reload when this number or the registry generation changes (profiles do not
-- bump the registry generation: computing one must not invalidate every cached listing).
CREATE TABLE profile_generation (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO profile_generation (id, n) VALUES (1, 0);

CREATE FUNCTION quiver_bump_profile_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE profile_generation SET n = n + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER profile_generation AFTER INSERT OR UPDATE OR DELETE ON profiles
FOR EACH STATEMENT EXECUTE FUNCTION quiver_bump_profile_generation();
