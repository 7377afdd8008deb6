-- A job submitted with a job's API token (`job run --api-token`) carries its parent's id in
-- the label hodei.io/parent; once the parent is cancelled, each sweep cancels such jobs not
-- ended (queries.sql's children_of_cancelled). Only they are in this index: most rounds read
-- nothing from it.
CREATE INDEX idx_jobs_children_not_ended ON jobs (created_at)
    WHERE spec -> 'labels' ? 'hodei.io/parent' AND state IN ('PENDING', 'ASSIGNED', 'RUNNING');

-- A label's value as a job's id, NULL when it is none: a label under hodei.io/ set by hand
-- before the server kept them to itself may hold any text, and a cast of it would fail the
-- whole statement (`cron list` did, for everyone).
CREATE FUNCTION hodei.job_id_of(label TEXT) RETURNS UUID LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN label ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN label::uuid END
$$;
