-- A submitter's second limit (hodei.domain.limit, `limit set SUBMITTER --max-submitted N`): at
-- most N of its jobs not ended (queued, held or running); a submission past it is refused —
-- Slurm's MaxSubmitJobs. Each of a submitter's own two limits is a number, null (none) or
-- `*`'s: an event names the limits it leaves to `*` in `inherits`, and a SubmitterLimitSet or
-- Changed of version 1 (no `submitted`) left that one to `*`. A deletion has neither.

-- One of a submitter's limits ('jobs' or 'submitted'): its own, else `*`'s; NULL: none.
CREATE FUNCTION hodei.submitter_bound(submitter TEXT, field TEXT) RETURNS INTEGER
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN own ? field AND NOT coalesce(own -> 'inherits' ? field, FALSE) THEN (own ->> field)::int
                ELSE (hodei.own_submitter_limit('*') ->> field)::int END
    FROM (SELECT hodei.own_submitter_limit(submitter) AS own) s
$$;

CREATE OR REPLACE FUNCTION hodei.submitter_limit(submitter TEXT) RETURNS INTEGER
LANGUAGE sql STABLE AS $$
    SELECT hodei.submitter_bound(submitter, 'jobs')
$$;

-- A submitter's jobs not ended, counted at each of its submissions while it has that limit
-- (idx_jobs_actor_created would read its whole history).
CREATE INDEX idx_jobs_actor_not_ended ON jobs (actor) WHERE state IN ('PENDING', 'ASSIGNED', 'RUNNING');
