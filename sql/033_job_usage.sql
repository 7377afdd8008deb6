-- What each job used over all its attempts, for `report` (sacct/sreport's accounting): the
-- seconds its command ran (each attempt from its start to its end, by the worker's clock
-- where it said), the CPU seconds and the peak memory its workers measured (NULL: none
-- said). Projected from JobStatusChanged and JobStopped (hodei.store.projections); the
-- jobs that ran before this migration get theirs from the log below, by the projection's
-- rules and in its order, so `replay --verify` finds nothing to tell apart.
ALTER TABLE jobs
    ADD COLUMN run_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN cpu_seconds DOUBLE PRECISION,
    ADD COLUMN peak_memory_bytes BIGINT;

WITH changes AS (
    -- The events that set a job's state, each with the state it left.
    SELECT aggregate_id, aggregate_version, event_type, occurred_at, payload,
           lag(CASE event_type WHEN 'JobCreated' THEN 'PENDING' WHEN 'JobAssigned' THEN 'ASSIGNED'
                               ELSE payload ->> 'new_state' END)
               OVER (PARTITION BY aggregate_id ORDER BY aggregate_version) AS was,
           lag(occurred_at) OVER (PARTITION BY aggregate_id ORDER BY aggregate_version) AS was_at
    FROM domain_events
    WHERE event_type IN ('JobCreated', 'JobAssigned', 'JobStatusChanged')
), ended AS (
    -- Each attempt's end (requeued or finished), and each stop of a cancelled job's processes.
    SELECT aggregate_id, aggregate_version,
           CASE WHEN event_type = 'JobStopped' THEN NULL
                ELSE greatest(0, extract(epoch FROM coalesce((payload ->> 'ran_until')::timestamptz, occurred_at)
                    - coalesce((payload ->> 'ran_from')::timestamptz, CASE WHEN was = 'RUNNING' THEN was_at END))::float8)
           END AS ran,
           (payload -> 'usage' ->> 'cpu_seconds')::float8 AS cpu,
           (payload -> 'usage' ->> 'peak_memory_bytes')::bigint AS peak
    FROM changes
    WHERE event_type = 'JobStatusChanged'
      AND payload ->> 'new_state' IN ('PENDING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')
    UNION ALL
    SELECT aggregate_id, aggregate_version, NULL, (payload -> 'usage' ->> 'cpu_seconds')::float8,
           (payload -> 'usage' ->> 'peak_memory_bytes')::bigint
    FROM domain_events WHERE event_type = 'JobStopped'
), summed AS (
    -- Running sums in the log's order: a float sum in another order could differ in its
    -- last bit from the projection's, one addition after another.
    SELECT DISTINCT ON (aggregate_id) aggregate_id,
           sum(coalesce(ran, 0)) OVER w AS ran,
           sum(cpu) OVER w AS cpu,
           max(peak) OVER w AS peak
    FROM ended
    WINDOW w AS (PARTITION BY aggregate_id ORDER BY aggregate_version)
    ORDER BY aggregate_id, aggregate_version DESC
)
UPDATE jobs AS j SET run_seconds = s.ran, cpu_seconds = s.cpu, peak_memory_bytes = s.peak
FROM summed AS s WHERE j.id = s.aggregate_id::uuid;

-- `report` reads the jobs that ended in a window.
CREATE INDEX idx_jobs_completed_at ON jobs (completed_at) WHERE completed_at IS NOT NULL;
