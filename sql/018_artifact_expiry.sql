-- Artifacts kept for a time of their own (`job run --artifacts-expire 7d`, GitLab's
-- expire_in), found by when their job ended: the jobs that set one, and only those.
CREATE INDEX idx_jobs_artifacts_expire ON jobs (completed_at)
    WHERE coalesce((spec ->> 'artifacts_expire_seconds')::float8, 0) > 0;
