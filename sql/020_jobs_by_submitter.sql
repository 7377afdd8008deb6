-- A submitter's jobs, newest first (`job list --submitter NAME`, `--mine`; the console's
-- list filtered by submitter): the list's order within one submitter's jobs.
CREATE INDEX idx_jobs_actor_created ON jobs (actor, created_at DESC, id);
