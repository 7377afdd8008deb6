-- The job list is newest first, ties by id (queries.sql: list_jobs). With an index in
-- that very order a page is read off its front; with the old one on created_at alone,
-- every listing sorted the whole jobs table and joined every log file to it.
CREATE INDEX idx_jobs_newest_first ON jobs (created_at DESC, id);
DROP INDEX idx_jobs_created_at;
