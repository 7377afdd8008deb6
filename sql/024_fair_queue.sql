-- The fair queue order (HODEI_QUEUE_ORDER=fair, hodei.admission): a submitter's use is its
-- jobs admitted and not ended, on any provider, plus those admitted in the last `recent`
-- seconds that have ended since — so a submitter whose jobs are short still takes turns
-- with one whose jobs run long.
CREATE INDEX idx_jobs_actor_admitted_at ON jobs (actor, admitted_at) WHERE admitted_at IS NOT NULL;

CREATE FUNCTION hodei.submitter_use(submitter TEXT, recent DOUBLE PRECISION) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT hodei.submitter_running(submitter) + (
        SELECT count(*) FROM jobs j
        WHERE j.actor = submitter AND j.admitted_at > now() - make_interval(secs => recent)
          AND j.state NOT IN ('PENDING', 'ASSIGNED', 'RUNNING'))
$$;

-- The first job a queued job starts after (--after) that has not ended as asked: its id, state
-- and the condition; NULL when none (the queue's listing says what a job waits for).
CREATE FUNCTION hodei.unmet_after(spec JSONB) RETURNS JSONB
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('job_id', d.job_id, 'state', d.state, 'condition', d.condition)
    FROM hodei.after_states(spec) d
    WHERE hodei.after_met(d.condition, d.state) IS NOT TRUE
    ORDER BY d.job_id LIMIT 1
$$;

-- The fair order's submitters of a provider's queue, each with its use (hodei.submitter_use,
-- counted for them all in two index scans rather than two counts each: 100 submitters waiting,
-- 20 -> 4 ms); NULL for jobs of no submitter (none are written now: a job's submitter is the
-- name of whoever wrote it), whose use counts as none.
CREATE FUNCTION hodei.queued_use(provider TEXT, recent DOUBLE PRECISION) RETURNS TABLE (actor TEXT, used BIGINT)
LANGUAGE sql STABLE AS $$
    WITH queued AS MATERIALIZED (
        SELECT q.actor FROM hodei.queued_submitters(provider) q (actor)
    ), counted AS (
        SELECT j.actor::text AS actor FROM jobs j  -- idx_jobs_admitted_actor
        WHERE j.actor IN (SELECT q.actor FROM queued q) AND j.admitted_at IS NOT NULL
          AND j.state IN ('PENDING', 'ASSIGNED', 'RUNNING')
        UNION ALL
        SELECT j.actor::text FROM jobs j  -- idx_jobs_actor_admitted_at
        WHERE j.actor IN (SELECT q.actor FROM queued q) AND j.admitted_at > now() - make_interval(secs => recent)
          AND j.state NOT IN ('PENDING', 'ASSIGNED', 'RUNNING')
    )
    SELECT q.actor, coalesce(c.used, 0) FROM queued q
    LEFT JOIN (SELECT c.actor, count(*) AS used FROM counted c GROUP BY c.actor) c USING (actor)
    UNION ALL
    SELECT NULL, 0 WHERE EXISTS (
        SELECT 1 FROM jobs j
        WHERE j.provider_type = provider AND j.state = 'PENDING' AND j.admitted_at IS NULL AND j.actor IS NULL)
$$;

-- What share of queued jobs belong to an array with a limit or name a pool, as the queue's
-- queries ask it (`coalesce(spec ->> 'array_limit', '0') = '0'`): without it PostgreSQL
-- guesses 0.5% of jobs for each, expects a submitter's queued jobs to be nearly all filtered
-- out, and reads and sorts all of them where its first few in order (idx_jobs_queued_actor)
-- would do: a fair round with 100 submitters of 100 queued jobs each, planned for its
-- parameters (as on a connection's first executions), 108 -> 42 ms (a submitter's jobs: 0.9 ->
-- 0.16 ms). ANALYZE (autovacuum's) gathers it.
CREATE STATISTICS jobs_queue_shape ON (coalesce(spec ->> 'array_limit', '0')), (coalesce(spec ->> 'pool', '')) FROM jobs;
