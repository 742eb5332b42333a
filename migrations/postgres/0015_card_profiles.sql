-- Cards as profiles (docs/routing.md): a version with a model card (README.md) and no
-- samples.jsonl gets a profile from the card's text, `source = 'card'`. A card with nothing to
-- embed is recorded as a profile of no rows (count = 0), which is never routed or shown, so that
-- the reconciler does not look at the version again.

ALTER TABLE profiles DROP CONSTRAINT profiles_source_check;
ALTER TABLE profiles ADD CONSTRAINT profiles_source_check
    CHECK (source IN ('samples', 'uploaded', 'card'));
