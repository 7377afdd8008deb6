-- An array submitted with a limit (`--array 0-99%4`, Slurm's %N) has at most that many of its
-- jobs admitted and not ended at once. The queue's query reads the arrays that have one
-- through this index (the jobs of no limited array are not in it: no job pays for it).
CREATE INDEX idx_jobs_array_limited ON jobs (provider_type)
    WHERE state = 'PENDING' AND admitted_at IS NULL AND spec ->> 'array_limit' <> '0';

-- How many jobs of an array are admitted and have not ended (idx_jobs_array).
CREATE FUNCTION hodei.array_running(array_id TEXT) RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM jobs a
    WHERE a.spec -> 'labels' ? 'hodei.io/array' AND a.spec -> 'labels' ->> 'hodei.io/array' = array_id
      AND a.admitted_at IS NOT NULL AND a.state IN ('PENDING', 'ASSIGNED', 'RUNNING')
$$;

-- Whether a queued job is in its line: its retry's backoff over, its time come (--begin), and
-- every job it starts after ended as asked (--after). The queue's queries ask it.
CREATE FUNCTION hodei.in_line(spec JSONB, retry_at TIMESTAMPTZ) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT (retry_at IS NULL OR retry_at <= now())
       AND coalesce(nullif(spec ->> 'begin_at', '')::timestamptz, '-infinity') <= now()
       AND NOT EXISTS (SELECT 1 FROM hodei.after_states(spec) d WHERE hodei.after_met(d.condition, d.state) IS NOT TRUE)
$$;
