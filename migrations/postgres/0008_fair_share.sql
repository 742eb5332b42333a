-- Fair share of workers: a claim picks the submitter with the fewest running jobs (then the one
-- whose last job started longest ago), then that submitter's oldest queued job. These indexes
-- keep it to index reads with many queued jobs: queued or running jobs by submitter and age
-- (covering the claim's filters on backoff and kind), and each submitter's latest start.
CREATE INDEX jobs_fair ON jobs (state, created_by, created_at, id, run_after, kind);
CREATE INDEX jobs_started_by ON jobs (created_by, started_at);
