-- Submitter limits (hodei.domain.limit, `limit set SUBMITTER N`): at most N of one
-- submitter's jobs (a job's `actor`, the name of the token that submitted it) admitted and
-- not ended at once, whatever their providers — Slurm's MaxJobs per user. A limit named `*`
-- is every submitter's that has none of its own. Like pools they have no read model: their
-- events (a limit, a deletion, each naming its submitter) are read from the log by name.
CREATE INDEX idx_domain_events_submitter_limits ON domain_events ((payload ->> 'submitter'), aggregate_version)
    WHERE aggregate_type = 'SubmitterLimit';

-- The latest event of a submitter's own limit (NULL: never set): `jobs` is its limit (a JSON
-- null: none, whatever `*` says); a deletion has no `jobs`.
CREATE FUNCTION hodei.own_submitter_limit(submitter TEXT) RETURNS JSONB
LANGUAGE sql STABLE AS $$
    SELECT e.payload FROM domain_events e
    WHERE e.aggregate_type = 'SubmitterLimit' AND e.payload ->> 'submitter' = submitter
    ORDER BY e.aggregate_version DESC LIMIT 1
$$;

-- A submitter's limit: its own, else `*`'s; NULL: none.
CREATE FUNCTION hodei.submitter_limit(submitter TEXT) RETURNS INTEGER
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN own ? 'jobs' THEN (own ->> 'jobs')::int
                ELSE (hodei.own_submitter_limit('*') ->> 'jobs')::int END
    FROM (SELECT hodei.own_submitter_limit(submitter) AS own) s
$$;

-- Whether any limit was ever set: until then no admission round looks for one (a scan of
-- the queued jobs' submitters saved).
CREATE FUNCTION hodei.submitter_limits_set() RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM domain_events WHERE aggregate_type = 'SubmitterLimit')
$$;

-- A submitter's queued jobs of a provider in the queue's order: a round takes the first few
-- of each limited submitter (its room), not a ranking of them all.
CREATE INDEX idx_jobs_queued_actor ON jobs (provider_type, actor, priority DESC, created_at, id)
    WHERE state = 'PENDING' AND admitted_at IS NULL;

-- The submitters with jobs queued for a provider: one index probe a submitter (a loose index
-- scan), not a read of every queued job (10,000 queued jobs of one submitter: 6 ms).
CREATE FUNCTION hodei.queued_submitters(provider TEXT) RETURNS SETOF TEXT
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE found AS (
        (SELECT j.actor::text AS actor FROM jobs j
         WHERE j.provider_type = provider AND j.state = 'PENDING' AND j.admitted_at IS NULL AND j.actor IS NOT NULL
         ORDER BY j.actor LIMIT 1)
        UNION ALL
        SELECT (SELECT j.actor::text FROM jobs j
                WHERE j.provider_type = provider AND j.state = 'PENDING' AND j.admitted_at IS NULL
                  AND j.actor > f.actor
                ORDER BY j.actor LIMIT 1)
        FROM found f WHERE f.actor IS NOT NULL
    )
    SELECT actor FROM found WHERE actor IS NOT NULL
$$;

-- A submitter's jobs admitted and not ended (on any provider): those take its room.
CREATE INDEX idx_jobs_admitted_actor ON jobs (actor)
    WHERE admitted_at IS NOT NULL AND state IN ('PENDING', 'ASSIGNED', 'RUNNING');

CREATE FUNCTION hodei.submitter_running(submitter TEXT) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM jobs j
    WHERE j.actor = submitter AND j.admitted_at IS NOT NULL AND j.state IN ('PENDING', 'ASSIGNED', 'RUNNING')
$$;
