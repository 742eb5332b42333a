-- Listing facets of each version, computed by the service from its LoRA summary and lineage when
-- it is published: how it was made, its largest rank, its target modules and whether vLLM loads
-- it. NULL in versions published before this migration until the service fills them at start.

ALTER TABLE versions ADD COLUMN kind TEXT;        -- trained | merged | compressed
ALTER TABLE versions ADD COLUMN max_rank BIGINT;
ALTER TABLE versions ADD COLUMN targets TEXT;     -- ',q_proj,v_proj,' (for LIKE '%,name,%')
ALTER TABLE versions ADD COLUMN vllm_ok BIGINT;   -- 1 or 0
