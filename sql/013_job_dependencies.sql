-- Jobs submitted with --after wait in the queue until each job they name has ended as
-- asked (spec -> 'after': job id -> condition). Whether one such condition holds: true
-- (it did), false (it never will: the job ended otherwise), NULL (the job has not ended).
-- hodei.domain.job.after_met says the same in Python (tests/test_admission.py compares them).
CREATE FUNCTION hodei.after_met(condition TEXT, state TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT') OR state IS NULL THEN NULL
        WHEN condition = 'any' THEN TRUE
        WHEN condition = 'ok' THEN state = 'SUCCEEDED'
        ELSE state <> 'SUCCEEDED'
    END
$$;

-- The jobs a job's spec names in `after`: each one's id, the condition asked of it and its
-- state (NULL while it is not in the read model). Looked up one by one through the primary
-- key: the queue's queries run every sweep, and jobs is the largest read model.
CREATE FUNCTION hodei.after_states(spec JSONB) RETURNS TABLE (job_id TEXT, condition TEXT, state TEXT)
LANGUAGE sql STABLE AS $$
    SELECT d.key, d.value, (SELECT j.state FROM jobs j WHERE j.id = d.key::uuid)
    FROM jsonb_each_text(spec -> 'after') d
$$;

-- `job get` names the jobs that wait for this one (spec -> 'after' ? its id). Only jobs that
-- wait for some are indexed: a GIN index of every job gathers each new one in its pending
-- list until a vacuum, and every lookup reads that list whole (a page of 50 jobs, 10,000 jobs
-- just written: the list's query took twice as long).
CREATE INDEX idx_jobs_after ON jobs USING gin ((spec -> 'after')) WHERE spec -> 'after' <> '{}'::jsonb;

-- `job run --after-array ID` names every job of an array (the label hodei.io/array).
CREATE INDEX idx_jobs_array ON jobs ((spec -> 'labels' ->> 'hodei.io/array'))
    WHERE spec -> 'labels' ? 'hodei.io/array';
