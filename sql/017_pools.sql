-- Pools (hodei.domain.pool, `pool set NAME SIZE`, `job run --pool NAME`): at most a pool's
-- size of the jobs naming it admitted and not ended at once. Pools have no read model: their
-- events (a size, a deletion, each naming its pool) are read from the log by name.
CREATE INDEX idx_domain_events_pools ON domain_events ((payload ->> 'name'), aggregate_version)
    WHERE aggregate_type = 'Pool';

-- A pool's size; NULL: no such pool (or deleted), whose jobs wait.
CREATE FUNCTION hodei.pool_size(pool_name TEXT) RETURNS INTEGER
LANGUAGE sql STABLE AS $$
    SELECT (e.payload ->> 'size')::int FROM domain_events e
    WHERE e.aggregate_type = 'Pool' AND e.payload ->> 'name' = pool_name
    ORDER BY e.aggregate_version DESC LIMIT 1
$$;

-- The jobs naming a pool: those admitted and not ended take its slots; the queued ones wait
-- for them (whatever their providers).
CREATE INDEX idx_jobs_pool ON jobs ((spec ->> 'pool')) WHERE spec ->> 'pool' <> '';

CREATE FUNCTION hodei.pool_running(pool_name TEXT) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM jobs p
    WHERE p.spec ->> 'pool' <> '' AND p.spec ->> 'pool' = pool_name
      AND p.admitted_at IS NOT NULL AND p.state IN ('PENDING', 'ASSIGNED', 'RUNNING')
$$;
