-- `job update --timeout/--cpu/--memory/--disk`: a job's log may now hold JobLimitsChanged, which
-- a version before this one cannot replay. Nothing to change in the tables (the new limits go
-- in the job's spec); this migration marks the database as this version's, so an older server,
-- relay or `replay` refuses it by name ("migrated by a newer hodei") instead of failing on the
-- event.
COMMENT ON COLUMN jobs.spec IS
    'The job''s spec as submitted (JobCreated), with its later priority (JobPrioritized) and limits (JobLimitsChanged)';
