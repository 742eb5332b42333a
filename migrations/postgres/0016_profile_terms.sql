-- BM25 beside the dense score (docs/routing.md, "How a prompt is scored"): the terms of the texts
-- a profile was embedded from (samples or card), as JSON {"counts": {term: n}, "length": n}.
-- NULL for uploaded vectors and for profiles made before this column: the dense score alone
-- ranks them.
ALTER TABLE profiles ADD COLUMN terms TEXT;
