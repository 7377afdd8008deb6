-- Retention: published outbox rows and job logs are removed after a while (the event log
-- is kept). These indexes let the sweeper find the oldest ones without a scan.
CREATE INDEX idx_outbox_events_published ON outbox_events (published_at) WHERE status = 'PUBLISHED';
CREATE INDEX idx_job_log_files_created_at ON job_log_files (created_at);
