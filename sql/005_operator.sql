-- The operator's view: jobs submitted again (`job retry`) name the job they came from;
-- an attempt whose command failed waits until retry_at before its retry is admitted.
ALTER TABLE jobs ADD COLUMN retry_of UUID;
ALTER TABLE jobs ADD COLUMN retry_at TIMESTAMPTZ;
CREATE INDEX idx_jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL;
