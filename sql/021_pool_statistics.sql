-- What share of jobs name a pool: without it PostgreSQL guesses that nearly every job's
-- `spec ->> 'pool' <> ''` holds, and reads every queued job of a provider (7 ms with
-- 10,000 queued) where idx_jobs_pool finds the few that name a pool (0.05 ms). Each
-- admission round asks it (lock_admission). ANALYZE (autovacuum's) gathers it.
CREATE STATISTICS jobs_pool ON (spec ->> 'pool') FROM jobs;
