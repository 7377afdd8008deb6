-- `webhook set --pipelines`: a webhook's definition events may now say `pipelines` (told of
-- pipelines that end instead of jobs), which a version before this one would ignore and tell
-- the webhook of every job instead. Nothing to change in the tables; this migration marks the
-- database as this version's, so an older server refuses it by name ("migrated by a newer
-- hodei").
COMMENT ON TABLE hodei.webhook_deliveries IS
    'Messages to webhooks: a job''s start or end (job_id: the job), a pipeline''s end (job_id: its first job), a test';
