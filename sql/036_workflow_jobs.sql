-- `job workflow ID` and the console's pipeline page read a pipeline's jobs by their label
-- hodei.io/workflow (queries.sql's workflow_jobs); without an index that read walked every job.
CREATE INDEX idx_jobs_workflow ON jobs ((spec -> 'labels' ->> 'hodei.io/workflow'), created_at)
    WHERE spec -> 'labels' ? 'hodei.io/workflow';
