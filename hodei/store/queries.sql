-- Every SQL statement of Hodei, by name (loaded by hodei/store/sql.py).
-- Read models are written only by the projections at the end of this file.

-- name: lock_domain_events
-- Serialises writers so that positions are handed out in commit order: the transaction's
-- turn on the event log, an advisory lock (hodei/sql/012_event_log_turns.sql), which
-- leaves autovacuum free to vacuum and analyze the log while writers take their turns.
SELECT hodei.take_event_log_turn();

-- name: insert_events_and_outbox
-- The events and their outbox rows in one statement, and the NOTIFY that wakes relays and
-- streams (sent at commit); returns the positions. The events come as one jsonb array
-- (one parameter: a third of the client's cost of an array per column, and less of
-- PostgreSQL's).
-- unmoved: when the save asks (%(flow)s, the job), aborts the transaction if an event of the
-- job, or of an aggregate of its flow, was committed after the command read the flow (a
-- WAIT started on that read could have missed it: the event's poke read the flow before
-- this commit). Under the lock, taken by the statement before: this statement's snapshot
-- sees every writer that committed before it.
-- acked: a handler's save (%(ack)s, its outbox row) acknowledges the row it handles here,
-- and aborts the transaction when its relay no longer holds the row (the lease was lost).
-- The row is still PROCESSING for the rest of the statement (one snapshot): `placed` finds
-- it among the rows its relay holds (%(held)s).
WITH acked AS (
    UPDATE outbox_events
    SET status = 'PUBLISHED', published_at = now(), lease_until = NULL
    WHERE id = %(ack)s::uuid AND claimed_by = %(ack_claimer)s AND status = 'PROCESSING'
    RETURNING 1
), leased AS (
    SELECT CASE WHEN %(ack)s::uuid IS NULL THEN true
                ELSE hodei.require((SELECT count(*) FROM acked) = 1, %(lease_lost)s) END AS ok
), unmoved AS (
    SELECT CASE WHEN %(flow)s::varchar IS NULL THEN true ELSE hodei.require(
        NOT EXISTS (SELECT 1 FROM domain_events WHERE correlation_id = %(flow)s AND position > %(seen)s)
        AND NOT EXISTS (SELECT 1 FROM domain_events WHERE aggregate_id = ANY(%(flow_aggregates)s::varchar[])
                                                      AND position > %(seen)s),
        %(moved)s) END AS ok
), input AS (
    SELECT * FROM jsonb_to_recordset(%(events)s::jsonb) AS r (
        id uuid, occurred_at timestamptz, event_type varchar, aggregate_id varchar, correlation_id varchar,
        actor varchar, payload jsonb, aggregate_type varchar, aggregate_version bigint, topic text,
        available_at timestamptz, delivered boolean, take boolean)
    WHERE (SELECT ok FROM leased) AND (SELECT ok FROM unmoved)
), audited AS (
    -- The saga events' audit rows (hodei.store.projections.project_but_audits), read as
    -- project_saga_audits reads them for replay.
    INSERT INTO saga_audit_events (id, saga_id, event_type, step_name, message, payload, occurred_at)
    SELECT a.event_id, a.id, a.event_type, a.step_name, a.message, a.payload, a.at
    FROM (
        SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::uuid AS event_id,
               (e->>3)::varchar AS event_type, (e->>4)::varchar AS step_name, (e->>5)::text AS message,
               (e->6) AS payload
        FROM jsonb_array_elements(%(audits)s::jsonb) AS e
    ) AS a
), events AS (
    INSERT INTO domain_events
        (id, occurred_at, event_type, aggregate_id, correlation_id, actor, payload, aggregate_type, aggregate_version, topic)
    SELECT id, occurred_at, event_type, aggregate_id, correlation_id, actor, payload, aggregate_type,
           aggregate_version, topic
    FROM input
    RETURNING id, position, aggregate_id, aggregate_type, event_type, correlation_id
)
-- origin: the first position of the event's correlation, an earlier transaction's or, for
-- a correlation that begins here, this statement's (sql/007_relay_order.sql).
-- takeable: the writer's relay asked for the row (hodei.store.recorder.LocalRelay: one
-- due now), and every open row of its aggregate is one that relay holds (the insert's own
-- rows are not seen here: a row taken is its aggregate's first, or behind those).
, placed AS (
    SELECT e.id, e.position, e.aggregate_id, e.aggregate_type, e.event_type, i.available_at, i.delivered,
           coalesce(
               (SELECT min(d.position) FROM domain_events d WHERE d.correlation_id = e.correlation_id),
               min(e.position) OVER (PARTITION BY coalesce(e.correlation_id, e.id::text))) AS origin,
           i.take AND NOT EXISTS (
               SELECT 1 FROM outbox_events o
               WHERE o.aggregate_id = e.aggregate_id AND o.status IN ('PENDING', 'PROCESSING')
                 AND NOT (o.id = ANY(%(held)s::uuid[]) AND o.status = 'PROCESSING'
                          AND o.claimed_by = %(claimer)s AND o.lease_until > now())
           ) AS takeable
    FROM events e JOIN input i ON i.id = e.id
), decided AS (
    -- A row no relay route wants is written delivered (hodei.relay.Relay.needs_delivery);
    -- one is taken only with every earlier row of its aggregate here that needs a relay.
    SELECT *, NOT delivered AND bool_and(delivered OR takeable)
              OVER (PARTITION BY aggregate_id ORDER BY position) AS taken
    FROM placed
), outbox AS (
    INSERT INTO outbox_events
        (id, position, aggregate_id, aggregate_type, event_type, available_at, status, published_at, claimed_by,
         lease_until, attempts, origin)
    SELECT id, position, aggregate_id, aggregate_type, event_type, available_at,
           CASE WHEN delivered THEN 'PUBLISHED' WHEN taken THEN 'PROCESSING' ELSE 'PENDING' END,
           CASE WHEN delivered THEN now() END,
           CASE WHEN taken THEN %(claimer)s END,
           CASE WHEN taken THEN now() + make_interval(secs => %(lease)s) END,
           CASE WHEN taken THEN 1 ELSE 0 END,
           origin
    FROM decided
    RETURNING position, status, origin
), notified AS (
    -- No row left for a claim: relays need not wake (hodei.signals); and when no waiter
    -- keys on what changed either (hodei.store.recorder.heard), nobody is told.
    SELECT pg_notify(%(channel)s, %(signal)s || CASE WHEN bool_and(status <> 'PENDING') THEN %(quiet)s ELSE '' END)
    FROM outbox
    HAVING %(heard)s OR NOT bool_and(status <> 'PENDING')
)
SELECT position, status = 'PROCESSING', origin FROM outbox LEFT JOIN notified ON true;

-- name: notify
SELECT pg_notify(%s, %s);

-- name: select_aggregate_events
-- A row's version is its first event's; a row of moves (a saga's, a worker's) holds more
-- than one (hodei.store.events.pack), so `gt` is compared with its last.
SELECT aggregate_id, aggregate_version, topic, payload::text, occurred_at
FROM domain_events
WHERE aggregate_id = %(aggregate_id)s
  AND (%(gt)s::bigint IS NULL
       OR aggregate_version + CASE WHEN event_type IN ('SagaMoved', 'WorkerMoved')
                                   THEN jsonb_array_length(payload->'events') - 1 ELSE 0 END
          > %(gt)s)
  AND (%(lte)s::bigint IS NULL OR aggregate_version <= %(lte)s)
ORDER BY CASE WHEN %(desc)s THEN -aggregate_version ELSE aggregate_version END
LIMIT %(limit)s;

-- name: select_notifications
SELECT position, aggregate_id, aggregate_version, topic, payload::text, occurred_at
FROM domain_events
WHERE (%(low)s::bigint IS NULL OR position >= %(low)s)
  AND (%(stop)s::bigint IS NULL OR position <= %(stop)s)
  AND (%(topics)s::text[] IS NULL OR topic = ANY(%(topics)s))
ORDER BY position
LIMIT %(limit)s;

-- name: max_position
SELECT max(position) FROM domain_events;

-- name: select_flow_events
-- Every event of every aggregate in a job's flow that has not ended (the job, its workers,
-- its sagas: each has events correlated with the job; a finished saga or a terminated
-- worker, known from the read models written with its last event, is loaded apart if a
-- command asks for it), oldest first per aggregate: what a command about the job reads,
-- in one statement (HodeiStore.command). The workers are found by the job's id as a uuid
-- (NULL when it is not one): compared as text, their index on job_id could not serve, and
-- every command about a job read the whole workers table (29 ms a read with 20,000 past
-- jobs: the history slowed every new job; e2e/test_history.py).
-- Each row also carries the last position the read saw: of the job's events (an ended
-- aggregate's included) and of the rows read (an aggregate's events need not all be
-- correlated), for insert_events_and_outbox's unmoved check.
SELECT aggregate_id, aggregate_version, topic, payload::text, occurred_at,
       greatest(max(position) OVER (),
                (SELECT max(position) FROM domain_events WHERE correlation_id = %(job)s)) AS seen
FROM domain_events
WHERE aggregate_id = ANY(ARRAY(
    SELECT aggregate_id FROM domain_events WHERE correlation_id = %(job)s
    EXCEPT SELECT id::text FROM sagas WHERE correlation_id = %(job)s AND state IN ('COMPLETED', 'FAILED')
    EXCEPT SELECT id::text FROM workers WHERE job_id = %(job_uuid)s AND state = 'TERMINATED'))
ORDER BY aggregate_id, aggregate_version;

-- name: select_event_records
-- Replay reads the whole log in position order, a page at a time.
SELECT id, occurred_at, event_type, aggregate_id, aggregate_type, aggregate_version,
       correlation_id, actor, payload, topic, position
FROM domain_events
WHERE position > %s
ORDER BY position
LIMIT %s;

-- name: job_events
SELECT event_type, occurred_at, aggregate_version, actor, payload
FROM domain_events
WHERE aggregate_id = %s
ORDER BY aggregate_version;

-- Projections: one or more statements per event type (hodei/store/projections.py).
-- Every value comes from the event, never from now(), so replay gives identical rows.
-- Each statement takes its rows as one jsonb array, one row per event and never two of
-- one aggregate: the live path sends one or a few, replay a whole page's worth (hundreds
-- of rows for the price of one statement). A row is an array of the statement's columns,
-- read by place in the order hodei.store.projections.COLUMNS names them (a test holds the
-- two together). A statement that finds its rows by key reads the array through
-- hodei.rows: jsonb_array_elements is planned as 100 rows, enough for a plan kept per
-- connection to scan and hash a whole table at every event.

-- name: project_job_created
-- The job as it is once the updates that follow its creation in one execution are folded
-- into it (hodei.store.projections._Creates, each update's SET clauses below applied in
-- Python by _UPDATES): a job created and moved in one page of a replay is inserted as it
-- ends up rather than inserted and then updated.
INSERT INTO jobs (id, created_at, name, spec, max_attempts, priority, retry_of, correlation_id, actor, state, attempt,
                  admitted_at, selected_provider_id, provider_type, worker_id, exit_code, error_message, started_at,
                  completed_at, cancelled_by, retry_at, held_by, hold_reason, updated_at, run_seconds, cpu_seconds,
                  peak_memory_bytes)
SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS name, (e->3) AS spec,
       (e->>4)::int AS max_attempts, (e->>5)::int AS priority, (e->>6)::uuid AS retry_of,
       (e->>7)::varchar AS correlation_id, (e->>8)::varchar AS actor, (e->>9)::varchar AS state, (e->>10)::int AS attempt,
       (e->>11)::timestamptz AS admitted_at, (e->>12)::uuid AS selected_provider_id,
       (e->>13)::varchar AS provider_type, (e->>14)::uuid AS worker_id, (e->>15)::int AS exit_code,
       (e->>16)::text AS error_message, (e->>17)::timestamptz AS started_at, (e->>18)::timestamptz AS completed_at,
       (e->>19)::varchar AS cancelled_by, (e->>20)::timestamptz AS retry_at, (e->>21)::varchar AS held_by,
       (e->>22)::text AS hold_reason, (e->>23)::timestamptz AS updated_at, (e->>24)::float8 AS run_seconds,
       (e->>25)::float8 AS cpu_seconds, (e->>26)::bigint AS peak_memory_bytes
FROM jsonb_array_elements(%s::jsonb) AS e;

-- name: project_job_admitted
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j SET admitted_at = r.at, updated_at = r.at
FROM (SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at FROM hodei.rows(%s::jsonb) AS e) AS r
WHERE j.id = r.id;

-- name: project_job_provider_selected
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j SET selected_provider_id = r.provider_id, provider_type = r.provider_type, updated_at = r.at,
    admitted_at = CASE WHEN r.admitted THEN r.at ELSE j.admitted_at END
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::uuid AS provider_id,
           (e->>3)::varchar AS provider_type, (e->>4)::boolean AS admitted
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_assigned
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j
SET state = 'ASSIGNED', worker_id = r.worker_id, selected_provider_id = r.provider_id,
    provider_type = r.provider_type, updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::uuid AS worker_id, (e->>3)::uuid AS provider_id,
           (e->>4)::varchar AS provider_type
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_touched
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j SET updated_at = r.at
FROM (SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at FROM hodei.rows(%s::jsonb) AS e) AS r
WHERE j.id = r.id;

-- name: project_job_held
-- A hold (`job hold`) or its release (both NULL). Its SET clauses have a Python twin in
-- hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j SET held_by = r.held_by, hold_reason = r.reason, updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS held_by, (e->>3)::text AS reason
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_prioritized
-- A queued job's new priority (`job update --priority`), in its column and its spec. Its SET
-- clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j SET priority = r.priority, spec = jsonb_set(j.spec, '{priority}', to_jsonb(r.priority)),
    updated_at = r.at
FROM (SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::int AS priority FROM hodei.rows(%s::jsonb) AS e) AS r
WHERE j.id = r.id;

-- name: project_job_limits_changed
-- A queued job's new time limit and resources (`job update --timeout --cpu --memory --disk`),
-- in its spec: the queue's capacity rules read them there.
UPDATE jobs AS j SET spec = j.spec || jsonb_build_object('timeout_seconds', r.timeout_seconds, 'resources', r.resources),
    updated_at = r.at
FROM (SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::float8 AS timeout_seconds, (e->3) AS resources
      FROM hodei.rows(%s::jsonb) AS e) AS r
WHERE j.id = r.id;

-- name: project_job_exec_requested
-- A command run beside a running job's own (`job exec`): appended, with who asked.
UPDATE jobs AS j SET execs = j.execs || jsonb_build_array(jsonb_build_object(
        'index', r.idx, 'attempt', r.attempt, 'argv', r.argv, 'timeout_seconds', r.timeout_seconds,
        'by', r.actor, 'requested_at', r.at)),
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::int AS idx, (e->>3)::int AS attempt,
           (e->4) AS argv, (e->>5)::int AS timeout_seconds, (e->>6) AS actor
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_exec_ended
-- How that command ended, into its entry.
UPDATE jobs AS j SET execs = jsonb_set(j.execs, ARRAY[r.idx::text], (j.execs -> r.idx) || jsonb_build_object(
        'exit_code', r.exit_code, 'message', r.message, 'stdout_bytes', r.stdout_bytes,
        'stderr_bytes', r.stderr_bytes, 'ended_at', r.at)),
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::int AS idx, (e->>3)::int AS exit_code,
           (e->>4) AS message, (e->>5)::bigint AS stdout_bytes, (e->>6)::bigint AS stderr_bytes
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_signalled
-- A signal sent to a running job (`job signal`): appended, with the attempt it is for. Not
-- folded into a replayed insert: its own statement, in the wave after it.
UPDATE jobs AS j SET signals = j.signals || jsonb_build_array(jsonb_build_array(r.attempt, r.signal)),
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::int AS attempt, (e->>3)::text AS signal
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_status_changed
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j
SET state = r.new_state,
    exit_code = CASE WHEN r.terminal THEN r.exit_code ELSE j.exit_code END,
    error_message = CASE WHEN r.terminal AND r.new_state <> 'SUCCEEDED' THEN r.reason
                         WHEN r.new_state = 'PENDING' THEN NULL ELSE j.error_message END,
    -- The worker's own times of the command, when it reports them, replace the server's.
    started_at = CASE WHEN r.new_state = 'RUNNING' THEN r.at
                      WHEN r.new_state = 'PENDING' THEN NULL
                      ELSE coalesce(r.ran_from, j.started_at) END,
    completed_at = CASE WHEN r.terminal THEN coalesce(r.ran_until, r.at) ELSE j.completed_at END,
    attempt = j.attempt + CASE WHEN r.new_state = 'PENDING' THEN 1 ELSE 0 END,
    worker_id = CASE WHEN r.new_state = 'PENDING' THEN NULL ELSE j.worker_id END,
    admitted_at = CASE WHEN r.new_state = 'PENDING' THEN NULL ELSE j.admitted_at END,
    cancelled_by = CASE WHEN r.new_state = 'CANCELLED' THEN r.actor ELSE j.cancelled_by END,
    retry_at = CASE WHEN r.new_state = 'PENDING' THEN r.retry_at END,
    -- An attempt that ended (requeued or finished) adds the time its command ran, from the
    -- worker's start or else from RUNNING (the state it leaves: j.state), and what it used.
    run_seconds = j.run_seconds + CASE WHEN r.terminal OR r.new_state = 'PENDING' THEN greatest(0, extract(epoch FROM
        coalesce(r.ran_until, r.at) - coalesce(r.ran_from, CASE WHEN j.state = 'RUNNING' THEN j.started_at END))::float8)
        ELSE 0 END,
    cpu_seconds = CASE WHEN r.cpu_seconds IS NULL THEN j.cpu_seconds ELSE coalesce(j.cpu_seconds, 0) + r.cpu_seconds END,
    peak_memory_bytes = greatest(j.peak_memory_bytes, r.peak_memory_bytes),
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS new_state, (e->>3)::boolean AS terminal,
           (e->>4)::int AS exit_code, (e->>5)::text AS reason, (e->>6)::timestamptz AS ran_from,
           (e->>7)::timestamptz AS ran_until, (e->>8)::timestamptz AS retry_at, (e->>9)::varchar AS actor,
           (e->>10)::float8 AS cpu_seconds, (e->>11)::bigint AS peak_memory_bytes
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_stopped
-- A cancelled job's processes ended: what they used. Its SET clauses have a Python twin in
-- hodei.store.projections._UPDATES: change both.
UPDATE jobs AS j
SET cpu_seconds = CASE WHEN r.cpu_seconds IS NULL THEN j.cpu_seconds ELSE coalesce(j.cpu_seconds, 0) + r.cpu_seconds END,
    peak_memory_bytes = greatest(j.peak_memory_bytes, r.peak_memory_bytes),
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::float8 AS cpu_seconds,
           (e->>3)::bigint AS peak_memory_bytes
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE j.id = r.id;

-- name: project_job_logs_persisted
INSERT INTO job_log_files (id, job_id, storage_uri, size_bytes, entry_count, created_at)
SELECT r.event_id, r.id, r.storage_uri, r.size_bytes, r.entry_count, r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::uuid AS event_id, (e->>3)::text AS storage_uri,
           (e->>4)::bigint AS size_bytes, (e->>5)::int AS entry_count
    FROM jsonb_array_elements(%s::jsonb) AS e
) AS r;

-- name: project_job_logs_expired
DELETE FROM job_log_files
WHERE job_id IN (SELECT (e->>0)::uuid AS id FROM hodei.rows(%s::jsonb) AS e);

-- name: project_worker_created
-- The worker as it is once the updates that follow its creation in one execution are
-- folded into it (hodei.store.projections._Creates, _UPDATES), as project_job_created.
INSERT INTO workers (id, created_at, job_id, attempt, provider_id, provider_type, state, provider_resource_id,
                     error_message, registered_at, updated_at)
SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::uuid AS job_id, (e->>3)::int AS attempt,
       (e->>4)::uuid AS provider_id, (e->>5)::varchar AS provider_type, (e->>6)::varchar AS state,
       (e->>7)::varchar AS provider_resource_id, (e->>8)::text AS error_message,
       (e->>9)::timestamptz AS registered_at, (e->>10)::timestamptz AS updated_at
FROM jsonb_array_elements(%s::jsonb) AS e;

-- name: project_worker_resource_created
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE workers AS w
SET provider_resource_id = r.resource_id,
    state = CASE WHEN w.state = 'CREATING' THEN 'CONNECTING' ELSE w.state END,
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS resource_id
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE w.id = r.id;

-- name: project_worker_registered
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE workers AS w SET state = 'READY', registered_at = r.at, updated_at = r.at
FROM (SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at FROM hodei.rows(%s::jsonb) AS e) AS r
WHERE w.id = r.id;

-- name: project_worker_state
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE workers AS w SET state = r.state, updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS state FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE w.id = r.id;

-- name: project_worker_failed
-- Its SET clauses have a Python twin in hodei.store.projections._UPDATES: change both.
UPDATE workers AS w SET state = 'FAILED', error_message = r.reason, updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::text AS reason FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE w.id = r.id;

-- name: project_saga_started
-- The saga and its planned steps (each an array of hodei.store.projections.STEP_COLUMNS), as
-- they are once the moves folded into them (hodei.store.projections._Starts: a saga's moves
-- that follow its start in one execution): a saga started and moved in one page of a
-- replay, or in one save, is inserted as it ends up rather than inserted and then updated.
WITH r AS (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS saga_type,
           (e->>3)::varchar AS correlation_id, (e->>4)::int AS attempt, (e->>5)::varchar AS actor, (e->6) AS steps,
           (e->>7)::varchar AS state, (e->>8)::varchar AS current_step, (e->>9)::text AS error,
           (e->>10)::timestamptz AS completed_at, (e->>11)::timestamptz AS updated_at
    FROM jsonb_array_elements(%s::jsonb) AS e
), saga AS (
    INSERT INTO sagas (id, saga_type, state, correlation_id, attempt, actor, current_step, error_message,
                       started_at, completed_at, updated_at)
    SELECT r.id, r.saga_type, r.state, r.correlation_id, r.attempt, r.actor, r.current_step, r.error,
           r.at, r.completed_at, r.updated_at
    FROM r
)
INSERT INTO saga_steps (id, saga_id, step_name, step_order, state, retry_count, deadline_at, error_message,
                        started_at, completed_at, updated_at)
SELECT s.step_id, r.id, s.step_name, s.step_order, s.state, s.retry_count, s.deadline_at, s.error,
       s.started_at, s.completed_at, s.updated_at
FROM r, LATERAL (
    SELECT (s->>0)::uuid AS step_id, (s->>1)::varchar AS step_name, (s->>2)::int AS step_order,
           (s->>3)::varchar AS state, (s->>4)::int AS retry_count, (s->>5)::timestamptz AS deadline_at,
           (s->>6)::text AS error, (s->>7)::timestamptz AS started_at, (s->>8)::timestamptz AS completed_at,
           (s->>9)::timestamptz AS updated_at
    FROM jsonb_array_elements(r.steps) AS s
) AS s;

-- name: project_saga_moves
-- A saga's moves, folded (hodei.store.projections._Moves): a row for each step changed,
-- with its last values (a NULL keeps the step's own: a finished step keeps its start and
-- retries, and its error too when `keep_error`), and a row without a step for each saga
-- moved, to its current step or to its end (`finished`).
WITH r AS (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS state, (e->>3)::varchar AS step_name,
           (e->>4)::int AS step_order, (e->>5)::int AS retry_count, (e->>6)::timestamptz AS deadline_at,
           (e->>7)::text AS error, (e->>8)::boolean AS keep_error, (e->>9)::timestamptz AS started_at,
           (e->>10)::timestamptz AS completed_at, (e->>11)::boolean AS finished
    FROM hodei.rows(%s::jsonb) AS e
), step AS (
    UPDATE saga_steps AS s
    SET state = r.state,
        retry_count = coalesce(r.retry_count, s.retry_count),
        deadline_at = r.deadline_at,
        error_message = CASE WHEN r.keep_error THEN coalesce(r.error, s.error_message) ELSE r.error END,
        started_at = coalesce(r.started_at, s.started_at),
        completed_at = r.completed_at,
        updated_at = r.at
    FROM r WHERE s.saga_id = r.id AND s.step_order = r.step_order
)
UPDATE sagas AS g
SET state = CASE WHEN r.finished THEN r.state ELSE 'IN_PROGRESS' END,
    current_step = CASE WHEN r.finished THEN NULL ELSE r.step_name END,
    error_message = CASE WHEN r.finished THEN coalesce(r.error, g.error_message) ELSE g.error_message END,
    completed_at = CASE WHEN r.finished THEN r.at ELSE g.completed_at END,
    updated_at = r.at
FROM r WHERE r.step_order IS NULL AND g.id = r.id;

-- name: project_step_compensating
-- The step and its saga.
WITH r AS (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS step_name, (e->>3)::int AS step_order
    FROM hodei.rows(%s::jsonb) AS e
), step AS (
    UPDATE saga_steps AS s SET state = 'COMPENSATING', updated_at = r.at
    FROM r WHERE s.saga_id = r.id AND s.step_order = r.step_order
)
UPDATE sagas AS g SET state = 'COMPENSATING', current_step = coalesce(r.step_name, g.current_step), updated_at = r.at
FROM r WHERE g.id = r.id;

-- name: project_saga_audits
-- Audit rows, a replay's page or a rebuilt job's, in one statement (a live save inserts its
-- own in insert_events_and_outbox's `audited`, which reads them alike).
INSERT INTO saga_audit_events (id, saga_id, event_type, step_name, message, payload, occurred_at)
SELECT r.event_id, r.id, r.event_type, r.step_name, r.message, r.payload, r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::uuid AS event_id,
           (e->>3)::varchar AS event_type, (e->>4)::varchar AS step_name, (e->>5)::text AS message,
           (e->6) AS payload
    FROM jsonb_array_elements(%s::jsonb) AS e
) AS r;

-- name: project_provider_registered
INSERT INTO provider_configs (id, name, provider_type, status, health, config, created_at, updated_at)
SELECT r.id, r.name, r.provider_type, 'ACTIVE', 'UNKNOWN', r.config, r.at, r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS name, (e->>3)::varchar AS provider_type,
           (e->4) AS config
    FROM jsonb_array_elements(%s::jsonb) AS e
) AS r;

-- name: project_provider_status
UPDATE provider_configs AS p SET status = r.status, updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS status FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE p.id = r.id;

-- name: project_provider_capacity
UPDATE provider_configs AS p
SET config = CASE WHEN r.max_workers IS NULL THEN p.config - 'max_workers'
                  ELSE jsonb_set(p.config, '{max_workers}', to_jsonb(r.max_workers)) END,
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::int AS max_workers FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE p.id = r.id;

-- name: project_provider_resources
-- The CPU cores and memory its jobs may ask for together (`provider capacity --cpus
-- --memory`): set, or removed (NULL: no limit).
UPDATE provider_configs AS p
SET config = p.config - 'max_cpu_cores' - 'max_memory_bytes'
             || CASE WHEN jsonb_typeof(r.max_cpu_cores) = 'number'
                     THEN jsonb_build_object('max_cpu_cores', r.max_cpu_cores) ELSE '{}' END
             || CASE WHEN jsonb_typeof(r.max_memory_bytes) = 'number'
                     THEN jsonb_build_object('max_memory_bytes', r.max_memory_bytes) ELSE '{}' END,
    updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->2) AS max_cpu_cores, (e->3) AS max_memory_bytes
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE p.id = r.id;

-- name: project_provider_health
UPDATE provider_configs AS p SET health = r.health, health_message = r.message, updated_at = r.at
FROM (
    SELECT (e->>0)::uuid AS id, (e->>1)::timestamptz AS at, (e->>2)::varchar AS health, (e->>3)::text AS message
    FROM hodei.rows(%s::jsonb) AS e
) AS r
WHERE p.id = r.id;

-- Outbox relay -------------------------------------------------------------------

-- name: claim_outbox_rows
-- A row is claimable when it is due (or its lease expired) and every earlier open row of
-- its aggregate is claimable too: the relay then handles an aggregate's rows in order,
-- one at a time, while rows of different aggregates run in parallel. A row that is not
-- due (claimed by someone, or waiting to be retried) blocks the rest of its aggregate,
-- which keeps per-aggregate order across relays. The earliest open rows form a window;
-- an aggregate's earliest open row is always in it.
WITH open AS (
    SELECT id, aggregate_id, position, origin,
           (status = 'PENDING' AND available_at <= now()) OR (status = 'PROCESSING' AND lease_until < now()) AS due
    FROM outbox_events
    WHERE status IN ('PENDING', 'PROCESSING')
    ORDER BY position
    LIMIT %(window)s
), blocked AS (
    SELECT aggregate_id, min(position) AS from_position FROM open WHERE NOT due GROUP BY aggregate_id
), due AS (
    -- Older jobs first (origin), each job's rows in log order.
    SELECT o.id, o.aggregate_id, o.position FROM open o LEFT JOIN blocked b ON b.aggregate_id = o.aggregate_id
    WHERE o.due AND (b.from_position IS NULL OR o.position < b.from_position)
    ORDER BY o.origin, o.position
    LIMIT %(limit)s
), locked AS (
    -- The status test is repeated here so that it is re-checked on the row version a
    -- concurrent relay may just have committed.
    SELECT o.id FROM outbox_events o
    WHERE o.id = ANY(ARRAY(SELECT id FROM due))
      AND ((o.status = 'PENDING' AND o.available_at <= now()) OR (o.status = 'PROCESSING' AND o.lease_until < now()))
    FOR UPDATE SKIP LOCKED
), runs AS (
    -- Of each aggregate, only the rows before the first one this statement could not lock
    -- (another relay holds it): never a later row without the earlier ones.
    SELECT d.id,
           bool_and(l.id IS NOT NULL) OVER (PARTITION BY d.aggregate_id ORDER BY d.position) AS unbroken
    FROM due d LEFT JOIN locked l ON l.id = d.id
), updated AS (
    UPDATE outbox_events o
    SET status = 'PROCESSING',
        claimed_by = %(claimer)s,
        lease_until = now() + make_interval(secs => %(lease)s),
        attempts = o.attempts + 1
    WHERE o.id = ANY(ARRAY(SELECT id FROM runs WHERE unbroken))
    RETURNING o.id, o.attempts, o.origin
)
-- `= ANY(ARRAY(...))` is evaluated once: whatever the table statistics, each table is
-- read in one pass (an outbox is a queue, and its statistics are often stale).
SELECT u.id, u.attempts, d.occurred_at, d.event_type, d.aggregate_id, d.aggregate_type,
       d.aggregate_version, d.correlation_id, d.actor, d.payload, d.topic, d.position, u.origin
FROM domain_events d JOIN updated u ON u.id = d.id
WHERE d.id = ANY(ARRAY(SELECT id FROM updated));

-- name: ack_outbox_row_with_reads
-- A handler that read and wrote nothing: its row acknowledged in the transaction of its
-- reads, which then commits without waiting for the disk (as claims do: a lost
-- acknowledgement is one more delivery, which handlers tolerate).
WITH acked AS (
    UPDATE outbox_events
    SET status = 'PUBLISHED', published_at = now(), lease_until = NULL
    WHERE id = %s AND claimed_by = %s AND status = 'PROCESSING'
)
SELECT set_config('synchronous_commit', 'off', true);

-- name: ack_outbox_rows
UPDATE outbox_events
SET status = 'PUBLISHED', published_at = now(), lease_until = NULL
WHERE id = ANY(%s) AND claimed_by = %s AND status = 'PROCESSING';

-- name: release_outbox_row
-- A failed delivery: back to PENDING after a delay, or to DEAD_LETTER for good.
UPDATE outbox_events
SET status = %(status)s,
    available_at = now() + make_interval(secs => %(delay)s),
    last_error = %(error)s,
    claimed_by = NULL,
    lease_until = NULL
WHERE id = %(id)s AND claimed_by = %(claimer)s AND status = 'PROCESSING';

-- name: outbox_stats
SELECT count(*) FILTER (WHERE status IN ('PENDING', 'PROCESSING')),
       count(*) FILTER (WHERE status = 'DEAD_LETTER'),
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status IN ('PENDING', 'PROCESSING'))) * 1000, 0)::bigint
FROM outbox_events;

-- name: has_open_outbox_rows
SELECT EXISTS (SELECT 1 FROM outbox_events WHERE status IN ('PENDING', 'PROCESSING') AND available_at <= now());

-- Sagas ---------------------------------------------------------------------------

-- name: open_sagas_of_job
SELECT id FROM sagas WHERE correlation_id = %s AND state IN ('IN_PROGRESS', 'COMPENSATING') ORDER BY started_at;

-- name: worker_token_key
SELECT value FROM hodei.secrets WHERE name = 'worker_token_key';

-- name: installation_id
SELECT value FROM hodei.secrets WHERE name = 'installation_id';

-- Read models for the API ---------------------------------------------------------

-- part: job_columns
-- A job as the API shows it (hodei.store.readmodels.JobRow), from `jobs j` and its log's
-- `job_log_files l`.
j.id, j.name, j.state, j.spec, j.selected_provider_id, j.provider_type, j.worker_id, j.exit_code,
j.error_message, j.attempt, j.created_at, j.started_at, j.completed_at, j.updated_at, l.storage_uri,
j.actor AS submitted_by, j.cancelled_by, j.retry_of, j.retry_at, j.held_by, j.hold_reason,
j.run_seconds, j.cpu_seconds, j.peak_memory_bytes,
ARRAY(SELECT r.id FROM jobs r WHERE r.retry_of = j.id ORDER BY r.created_at, r.id) AS retried_by,
ARRAY(SELECT d.id FROM jobs d WHERE d.spec -> 'after' <> '{}'::jsonb AND d.spec -> 'after' ? j.id::text
      ORDER BY d.created_at, d.id) AS waited_on_by

-- name: get_job
SELECT
    @job_columns
FROM jobs j LEFT JOIN job_log_files l ON l.job_id = j.id
WHERE j.id = %s;

-- name: execs_of_job
SELECT execs FROM jobs WHERE id = %s;

-- name: job_exec
-- A job's state and attempt, and one of its commands run beside its own (`job exec`).
SELECT j.state, j.attempt, coalesce(j.execs -> %s, '{}'::jsonb) AS entry FROM jobs j WHERE j.id = %s;

-- name: jobs_of_array
-- The jobs of an array (`job run --array`), with their states; a job retried (`job retry`,
-- whose copy carries the array's label too) stands by its newest copy.
SELECT j.id::text AS job_id, j.state FROM jobs j
WHERE j.spec -> 'labels' ? 'hodei.io/array' AND j.spec -> 'labels' ->> 'hodei.io/array' = %s
  AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = j.id)
ORDER BY j.created_at, j.id;

-- part: job_filters
-- What job list selects jobs by (hodei.store.readmodels.job_list_params), `report` too.
AND (%(provider)s::varchar IS NULL OR j.provider_type = %(provider)s::varchar)
AND (%(name)s::text IS NULL OR strpos(lower(j.name), lower(%(name)s::text)) > 0)
AND (%(labels)s::jsonb IS NULL OR j.spec -> 'labels' @> %(labels)s::jsonb)
AND (%(labels_not)s::jsonb IS NULL OR NOT EXISTS (
    SELECT 1 FROM jsonb_array_elements(%(labels_not)s::jsonb) n WHERE j.spec -> 'labels' ->> (n ->> 0) = n ->> 1))
AND (%(labels_present)s::text[] IS NULL OR coalesce(j.spec -> 'labels', '{}') ?& %(labels_present)s::text[])
AND (%(labels_absent)s::text[] IS NULL OR NOT coalesce(j.spec -> 'labels', '{}') ?| %(labels_absent)s::text[])
AND (%(since)s::timestamptz IS NULL OR j.created_at >= %(since)s::timestamptz)
AND (%(submitter)s::varchar IS NULL OR j.actor = %(submitter)s::varchar)

-- name: list_jobs
SELECT
    @job_columns
FROM jobs j LEFT JOIN job_log_files l ON l.job_id = j.id
WHERE (%(state)s::varchar IS NULL OR j.state = %(state)s::varchar)
  @job_filters
ORDER BY j.created_at DESC, j.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_jobs
SELECT count(*) FROM jobs j
WHERE (%(state)s::varchar IS NULL OR j.state = %(state)s::varchar)
  @job_filters;

-- name: jobs_by_state
SELECT state, count(*) FROM jobs GROUP BY state;

-- name: sagas_by_state
SELECT state, count(*) FROM sagas GROUP BY state;

-- name: list_workers
SELECT w.id, w.job_id, w.state, w.provider_type, w.provider_resource_id, w.error_message, l.last_seen_at
FROM workers w LEFT JOIN hodei.worker_liveness l ON l.worker_id = w.id
WHERE (%(state)s::varchar IS NULL OR w.state = %(state)s::varchar)
  AND (NOT %(live)s OR w.state IN ('CREATING', 'CONNECTING', 'READY', 'BUSY'))
ORDER BY w.created_at DESC
LIMIT %(limit)s;

-- name: worker_and_job_states
-- What the sweeper compares provider observations against, for many workers at once.
SELECT w.id AS worker_id, w.job_id, w.state AS worker, j.state AS job, w.updated_at AS changed_at
FROM workers w JOIN jobs j ON j.id = w.job_id
WHERE w.id = ANY(%s::uuid[]);

-- name: provider_state
-- A provider's status and its last recorded health, from its read model (written with its
-- events): choosing a job's provider, and a probe that found no change, read one row, not
-- the provider's whole history (every health change it ever had).
SELECT id, name, provider_type, status, health, health_message, config FROM provider_configs WHERE id = %s;

-- name: list_providers
SELECT id, name, provider_type, status, health, health_message, config FROM provider_configs ORDER BY provider_type;

-- name: worker_session_states
-- What workers' streams need to decide whether to send run-job, cancel or signals: one stream's
-- own, or every connected one's (the guard against a missed signal).
SELECT w.id AS worker_id, w.state AS worker_state, w.attempt AS worker_attempt, j.state AS job_state,
       j.attempt AS job_attempt, j.spec, j.error_message, j.signals, j.execs
FROM workers w JOIN jobs j ON j.id = w.job_id
WHERE w.id = ANY(%s::uuid[]);

-- Worker liveness -----------------------------------------------------------------

-- name: touch_liveness
INSERT INTO hodei.worker_liveness (worker_id, server_id, connected, last_seen_at, timeout_seconds)
VALUES (%s, %s, %s, now(), %s)
ON CONFLICT (worker_id) DO UPDATE
SET server_id = excluded.server_id, connected = excluded.connected, last_seen_at = excluded.last_seen_at,
    timeout_seconds = excluded.timeout_seconds;

-- name: touch_liveness_many
-- Many workers' signs of life at once, each with its age (seconds), made a time by
-- PostgreSQL's clock, against which they are judged (``stale_workers``): one jsonb array
-- (arrays are dumped element by element, most of the cost of a thousand workers' flush).
-- Not for a worker that has ended (its stream closing after its end), whose record the
-- same statement may delete with those of the workers gone since the last flush.
WITH gone AS (
    DELETE FROM hodei.worker_liveness WHERE worker_id = ANY(%(gone)s::uuid[])
)
INSERT INTO hodei.worker_liveness (worker_id, server_id, connected, last_seen_at, timeout_seconds,
                                   cpu_cores, memory_bytes, usage_at)
SELECT r.worker_id, %(server)s, r.connected, now() - make_interval(secs => r.age), r.timeout,
       r.cpu, r.memory, CASE WHEN r.sampled THEN now() - make_interval(secs => r.age) END
FROM jsonb_to_recordset(%(seen)s::jsonb)
     AS r (worker_id uuid, connected boolean, age float8, timeout float8, cpu float8, memory int8, sampled boolean)
JOIN workers w ON w.id = r.worker_id AND w.state <> 'TERMINATED'
ON CONFLICT (worker_id) DO UPDATE
SET server_id = excluded.server_id, connected = excluded.connected,
    last_seen_at = greatest(hodei.worker_liveness.last_seen_at, excluded.last_seen_at),
    timeout_seconds = coalesce(excluded.timeout_seconds, hodei.worker_liveness.timeout_seconds),
    cpu_cores = CASE WHEN excluded.usage_at IS NULL THEN hodei.worker_liveness.cpu_cores ELSE excluded.cpu_cores END,
    memory_bytes = CASE WHEN excluded.usage_at IS NULL THEN hodei.worker_liveness.memory_bytes
                        ELSE excluded.memory_bytes END,
    usage_at = coalesce(excluded.usage_at, hodei.worker_liveness.usage_at);

-- name: jobs_usage
-- What running jobs use now (`job top`): their live worker's last heartbeat's usage, if any
-- (hodei.worker_liveness), and what they ask for.
SELECT j.id::text AS job_id, j.name, coalesce(j.provider_type, '') AS provider_type, w.id::text AS worker_id,
       l.cpu_cores, l.memory_bytes, l.usage_at,
       coalesce((j.spec -> 'resources' ->> 'cpu_cores')::float8, 0) AS asked_cpu_cores,
       coalesce((j.spec -> 'resources' ->> 'memory_bytes')::bigint, 0) AS asked_memory_bytes
FROM jobs j
JOIN workers w ON w.job_id = j.id AND w.attempt = j.attempt AND w.state <> 'TERMINATED'
LEFT JOIN hodei.worker_liveness l ON l.worker_id = w.id
WHERE j.id = ANY(%s::uuid[]) AND j.state = 'RUNNING'
ORDER BY j.created_at;

-- name: stale_workers
-- Registered workers that stopped reporting: no heartbeat within the timeout, counting
-- only the last %(heard_for)s seconds, since the sweeper could hear (its server and
-- database up): an outage is not the workers' silence. PostgreSQL's clock throughout. A
-- worker whose attempt is over (its job ended, or moved on to another attempt) is silent
-- because it is done: its release is the execution saga's, never a loss. A cancelled job's
-- may still be stopping its processes: the sweeper asks the job (``Job.stop_pending``).
SELECT w.id AS worker_id, w.job_id, coalesce(l.last_seen_at, w.registered_at) AS last_seen,
       coalesce(l.timeout_seconds, %(timeout)s) AS timeout, j.state = 'CANCELLED' AS cancelled
FROM workers w
JOIN jobs j ON j.id = w.job_id
LEFT JOIN hodei.worker_liveness l ON l.worker_id = w.id
WHERE w.state IN ('READY', 'BUSY')
  AND j.attempt = w.attempt AND j.state NOT IN ('SUCCEEDED', 'FAILED', 'TIMEOUT')
  AND greatest(coalesce(l.last_seen_at, w.registered_at), now() - make_interval(secs => %(heard_for)s))
      < now() - make_interval(secs => coalesce(l.timeout_seconds, %(timeout)s));

-- name: live_workers_of_cancelled_jobs
-- Workers of a cancelled job's attempt not yet released, cancelled more than %(margin)s
-- seconds ago: each still stopping its job's processes, or released soon (hodei.sweeper:
-- which have not reported them stopped in time). A worker whose report came within the
-- margin, as most do, is never read again.
SELECT w.id AS worker_id, w.job_id
FROM workers w JOIN jobs j ON j.id = w.job_id
WHERE w.state IN ('READY', 'BUSY') AND j.state = 'CANCELLED' AND j.attempt = w.attempt
  AND j.completed_at <= now() - make_interval(secs => %(margin)s);

-- name: overdue_saga_steps_with_job
-- Steps past their deadline. One that passed while the sweeper could not hear (an outage)
-- gets a grace after hearing resumes, for the worker to reconnect and report. Deadlines are
-- PostgreSQL's time as each server reckons it (hodei.clock), judged by the sweeper's
-- reckoning (%(now)s), as the engine judges them, rather than by now(): both within a
-- round trip of each other.
SELECT st.saga_id, s.correlation_id AS job_id, st.step_order
FROM saga_steps st JOIN sagas s ON s.id = st.saga_id
WHERE st.state = 'IN_PROGRESS' AND st.deadline_at < %(now)s
  AND (st.deadline_at >= %(hearing_since)s OR %(hearing_since)s < %(now)s - make_interval(secs => %(grace)s))
ORDER BY st.deadline_at
LIMIT 100;

-- API tokens ----------------------------------------------------------------------

-- name: insert_api_token
INSERT INTO hodei.api_tokens (name, role, token_hash, created_by, expires_at)
VALUES (%(name)s, %(role)s, %(token_hash)s, %(created_by)s,
        CASE WHEN %(expires_in)s::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => %(expires_in)s) END)
ON CONFLICT (name) DO NOTHING
RETURNING name, role, created_by, created_at, expires_at, revoked_at, revoked_by, last_used_at;

-- name: list_api_tokens
SELECT name, role, created_by, created_at, expires_at, revoked_at, revoked_by, last_used_at
FROM hodei.api_tokens ORDER BY name;

-- name: revoke_api_token
-- A token revoked again keeps its first revocation: when, and by whom.
UPDATE hodei.api_tokens
SET revoked_at = coalesce(revoked_at, now()),
    revoked_by = CASE WHEN revoked_at IS NULL THEN %(by)s ELSE revoked_by END
WHERE name = %(name)s
RETURNING name, role, created_by, created_at, expires_at, revoked_at, revoked_by, last_used_at;

-- name: find_api_token
-- A token's row by its hash, and whether it is usable right now.
SELECT name, role, created_by, created_at, expires_at, revoked_at, revoked_by, last_used_at,
       revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS usable
FROM hodei.api_tokens WHERE token_hash = %s;

-- name: job_token_holder
-- The job a job's API token names (`job run --api-token`), and its submitter's token, if it
-- has one: what the token may do is what that one may, the submit role at most.
SELECT j.actor AS submitted_by, j.state, j.worker_id::text AS worker_id, t.role,
       t.name IS NOT NULL AND NOT (t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()))
           AS submitter_refused
FROM jobs j LEFT JOIN hodei.api_tokens t ON t.name = j.actor
WHERE j.id = %s;

-- name: unusable_api_tokens
-- Of these hashes (the tokens of the streams a server has open), the tokens revoked or
-- expired by now, and their hashes. A hash no longer in the table is not answered.
SELECT token_hash, name, role, created_by, created_at, expires_at, revoked_at, revoked_by, last_used_at,
       false AS usable
FROM hodei.api_tokens
WHERE token_hash = ANY(%s::text[])
  AND NOT (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()));

-- name: note_api_token_use
-- The tokens a server's calls used since it last said (hodei.store.api_tokens.record_use).
UPDATE hodei.api_tokens SET last_used_at = now() WHERE token_hash = ANY(%s::text[]);

-- name: any_api_token
SELECT EXISTS (SELECT 1 FROM hodei.api_tokens);

-- Job secrets ---------------------------------------------------------------------

-- name: keep_job_key
-- The key of a job or a cron job: the one it has (hodei.store.job_secrets.seal), or this one.
-- DO UPDATE, not DO NOTHING and a read: it returns the row it met even when a racing insert
-- committed it while this one waited, which a read in the statement's snapshot cannot see.
INSERT INTO hodei.job_keys (job_id, key) VALUES (%(owner)s, %(key)s)
ON CONFLICT (job_id) DO UPDATE SET key = hodei.job_keys.key
RETURNING key;

-- name: job_key
SELECT key FROM hodei.job_keys WHERE job_id = %s;

-- name: delete_job_key
DELETE FROM hodei.job_keys WHERE job_id = %s;

-- name: delete_expired_job_keys
-- Keys of jobs that ended longer ago than the retention, and keys whose job was never
-- written (the submission failed after the key was stored). A cron job's key (its id is no
-- job's, but it has events) stays until the cron job is deleted.
DELETE FROM hodei.job_keys k
WHERE k.job_id IN (
    SELECT k2.job_id FROM hodei.job_keys k2 LEFT JOIN jobs j ON j.id = k2.job_id
    WHERE (j.id IS NULL AND k2.created_at < now() - interval '1 hour'
           AND NOT EXISTS (SELECT 1 FROM domain_events e WHERE e.aggregate_id = k2.job_id::text))
       OR (j.completed_at < now() - make_interval(secs => %s)
           AND j.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT'))
    LIMIT 1000
);

-- name: job_sealed_secrets
-- The sealed values a job was created with (JobCreated is always version 1 of a job).
SELECT payload -> 'sealed_secrets' FROM domain_events WHERE aggregate_id = %s AND aggregate_version = 1;

-- Server instances ----------------------------------------------------------------

-- name: register_instance
INSERT INTO hodei.server_instances (server_id, providers, worker_address, api_address)
VALUES (%(server_id)s, %(providers)s, %(worker_address)s, %(api_address)s)
ON CONFLICT (server_id) DO UPDATE
SET providers = excluded.providers, worker_address = excluded.worker_address,
    api_address = excluded.api_address, heartbeat_at = now();

-- name: database_clock
SELECT clock_timestamp();

-- name: instance_heartbeat
UPDATE hodei.server_instances SET heartbeat_at = now() WHERE server_id = %s;

-- name: hold_instance_lock
-- Held by the instance's own connection for as long as it lives: PostgreSQL lets go of it
-- the moment that connection ends (a crash, kill -9), which is how the others know.
SELECT pg_advisory_lock(8, hashtext(%s));

-- name: try_instance_lock
SELECT pg_try_advisory_lock(8, hashtext(%s));

-- name: release_instance_lock
SELECT pg_advisory_unlock(8, hashtext(%s));

-- name: other_instances
SELECT server_id FROM hodei.server_instances WHERE server_id <> %s;

-- name: release_claims_of
-- A dead instance's claimed outbox rows are due again at once, not at lease expiry.
UPDATE outbox_events SET lease_until = now()
WHERE claimed_by = %s AND status = 'PROCESSING';

-- name: deregister_instance
DELETE FROM hodei.server_instances WHERE server_id = %s;

-- name: live_instances
SELECT server_id, providers, worker_address, api_address, started_at, heartbeat_at
FROM hodei.server_instances
WHERE heartbeat_at > now() - make_interval(secs => %s)
ORDER BY started_at;

-- Admission ------------------------------------------------------------------------

-- name: lock_admission
-- One admitter per provider at a time, across servers, until its transaction ends; read in
-- the same statement (a round has no statement more for them when none is met): the pools
-- its queued jobs name and their submitters that have a limit, each in the order their
-- locks are taken (lock_pool, lock_submitter), and whether the submitter of the job joining
-- the queue (NULL: none) has a limit.
SELECT ARRAY(SELECT DISTINCT spec ->> 'pool' FROM jobs
             WHERE spec ->> 'pool' <> '' AND provider_type = %(provider)s AND state = 'PENDING' AND admitted_at IS NULL
             ORDER BY 1) AS pools,
       CASE WHEN hodei.submitter_limits_set() THEN
           ARRAY(SELECT s FROM hodei.queued_submitters(%(provider)s) s WHERE hodei.submitter_limit(s) IS NOT NULL
                 ORDER BY 1)
       ELSE '{}'::text[] END AS submitters,
       %(joining)s::uuid IS NOT NULL AND hodei.submitter_limits_set()
           AND hodei.submitter_limit((SELECT actor FROM jobs WHERE id = %(joining)s::uuid)) IS NOT NULL AS joining_limited
FROM (SELECT pg_advisory_xact_lock(7, hashtext(%(provider)s))) AS locked;

-- name: provider_capacity_and_use
-- The capacity set through the API (NULL: the server's default), the slots in use (workers
-- not yet terminated, and admitted jobs that have no such worker yet), of those the ones
-- starting (workers not yet registered, and the admitted jobs without one), and whether
-- the provider is disabled (`provider disable`: its queue waits); the CPU cores and memory
-- its jobs may ask for together (`provider capacity --cpus --memory`, NULL: no limit), and
-- what the jobs of those slots ask for (counted only where a limit is set).
WITH provider AS (
    SELECT (config ->> 'max_workers')::int AS configured, status = 'DISABLED' AS disabled,
           (config ->> 'max_cpu_cores')::float8 AS max_cpu_cores, (config ->> 'max_memory_bytes')::bigint AS max_memory_bytes
    FROM provider_configs WHERE provider_type = %(provider)s
), admitted_without_worker AS (
    SELECT j.id FROM jobs j
    WHERE j.provider_type = %(provider)s AND j.admitted_at IS NOT NULL
      AND j.state IN ('PENDING', 'ASSIGNED', 'RUNNING')
      AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.job_id = j.id AND w.attempt = j.attempt
                      AND w.state <> 'TERMINATED')
), live AS (
    SELECT count(*) AS n, count(*) FILTER (WHERE state IN ('CREATING', 'CONNECTING')) AS starting
    FROM workers WHERE provider_type = %(provider)s AND state <> 'TERMINATED'
), asked AS (  -- what the jobs holding its slots ask for: read only where the provider has a limit
    SELECT coalesce(sum((r ->> 'cpu_cores')::float8), 0) AS cpu_cores_in_use,
           coalesce(sum((r ->> 'memory_bytes')::bigint), 0) AS memory_bytes_in_use
    FROM (SELECT (SELECT spec -> 'resources' FROM jobs WHERE id = s.id) AS r  -- by its key: a few rows
          FROM (SELECT job_id AS id FROM workers WHERE provider_type = %(provider)s AND state <> 'TERMINATED'
                UNION ALL SELECT id FROM admitted_without_worker) s) held
    WHERE (SELECT max_cpu_cores IS NOT NULL OR max_memory_bytes IS NOT NULL FROM provider)
)
SELECT provider.configured,
       live.n + (SELECT count(*) FROM admitted_without_worker) AS in_use,
       live.starting + (SELECT count(*) FROM admitted_without_worker) AS starting,
       coalesce(provider.disabled, false) AS disabled,
       provider.max_cpu_cores, provider.max_memory_bytes, asked.cpu_cores_in_use, asked.memory_bytes_in_use
FROM live CROSS JOIN asked LEFT JOIN provider ON true;

-- name: next_in_queue
-- The queue's next jobs (by priority, then in submission order; with `fair`, by priority, then
-- each submitter's turn — its use, hodei.submitter_use over the last `recent` seconds, plus the
-- job's place among its ready ones — then in submission order: HODEI_QUEUE_ORDER=fair), but the one joining it in
-- the caller's transaction (NULL: none)
-- and those out of line (held, or not hodei.in_line). A job of an array with a limit
-- (`--array …%N`) is among them only while its array has room: its place among the array's
-- queued jobs (in the queue's order) within the limit less the array's jobs admitted and not
-- ended. A job whose submitter has a limit (`limit set`) likewise, within that limit less
-- the submitter's jobs admitted and not ended on any provider, its place counted among its
-- jobs of this provider that their arrays let go, but those of a full pool (which would
-- take its room and not use it). A job of a pool (`--pool`) likewise, within its pool's
-- size less the pool's jobs admitted and not ended on any provider, its place counted among
-- the pool's jobs of this provider that their arrays and submitters let go. Only of the
-- pools and limited submitters named (NULL: any), whose locks the caller holds (lock_pool,
-- lock_submitter): a job of another, which joined since, waits for a round.
WITH limited_queue AS (
    SELECT j.id, j.spec -> 'labels' ->> 'hodei.io/array' AS array_id, (j.spec ->> 'array_limit')::int AS array_limit,
           row_number() OVER (PARTITION BY j.spec -> 'labels' ->> 'hodei.io/array'
                              ORDER BY j.priority DESC, j.created_at, j.id) AS place
    FROM jobs j
    WHERE j.provider_type = %(provider)s AND j.state = 'PENDING' AND j.admitted_at IS NULL
      AND j.spec ->> 'array_limit' <> '0' AND j.held_by IS NULL AND hodei.in_line(j.spec, j.retry_at)
), running AS MATERIALIZED (  -- counted once an array, not once a queued job of it
    SELECT a.array_id, hodei.array_running(a.array_id) AS running FROM (SELECT DISTINCT array_id FROM limited_queue) a
), limited AS (
    SELECT q.id FROM limited_queue q JOIN running r USING (array_id) WHERE q.place <= q.array_limit - r.running
), pool_use AS MATERIALIZED (  -- counted once a pool its queue names
    SELECT p.pool, hodei.pool_running(p.pool) AS running, coalesce(hodei.pool_size(p.pool), 0) AS size
    FROM (SELECT DISTINCT j.spec ->> 'pool' AS pool FROM jobs j
          WHERE j.provider_type = %(provider)s AND j.state = 'PENDING' AND j.admitted_at IS NULL
            AND j.spec ->> 'pool' <> '' AND (%(pools)s::text[] IS NULL OR j.spec ->> 'pool' = ANY(%(pools)s::text[]))) p
), submitter_use AS MATERIALIZED (  -- counted once a submitter with a limit (none looked for until one is set)
    SELECT s.actor, s.jobs, hodei.submitter_running(s.actor) AS running
    FROM (SELECT q.actor, hodei.submitter_limit(q.actor) AS jobs
          FROM hodei.queued_submitters(%(provider)s) q (actor) WHERE hodei.submitter_limits_set()) s
    WHERE s.jobs IS NOT NULL
), submitted AS (  -- each limited submitter's first jobs within its room (idx_jobs_queued_actor)
    SELECT q.id FROM submitter_use u
    CROSS JOIN LATERAL (
        SELECT j.id FROM jobs j
        WHERE j.provider_type = %(provider)s AND j.actor = u.actor AND j.state = 'PENDING' AND j.admitted_at IS NULL
          AND j.held_by IS NULL AND hodei.in_line(j.spec, j.retry_at)
          AND (coalesce(j.spec ->> 'array_limit', '0') = '0' OR j.id IN (SELECT id FROM limited))
          AND (coalesce(j.spec ->> 'pool', '') = '' OR j.spec ->> 'pool' IN (SELECT pool FROM pool_use WHERE running < size))
        ORDER BY j.priority DESC, j.created_at, j.id
        LIMIT greatest(u.jobs - u.running, 0)
    ) q
    WHERE %(submitters)s::text[] IS NULL OR u.actor = ANY(%(submitters)s::text[])
), pooled_queue AS (
    SELECT j.id, j.spec ->> 'pool' AS pool,
           row_number() OVER (PARTITION BY j.spec ->> 'pool' ORDER BY j.priority DESC, j.created_at, j.id) AS place
    FROM jobs j
    WHERE j.provider_type = %(provider)s AND j.state = 'PENDING' AND j.admitted_at IS NULL
      AND j.spec ->> 'pool' IN (SELECT pool FROM pool_use) AND j.held_by IS NULL AND hodei.in_line(j.spec, j.retry_at)
      AND (coalesce(j.spec ->> 'array_limit', '0') = '0' OR j.id IN (SELECT id FROM limited))
      AND (j.actor IS NULL OR j.actor NOT IN (SELECT actor FROM submitter_use) OR j.id IN (SELECT id FROM submitted))
), pooled AS (
    SELECT q.id FROM pooled_queue q JOIN pool_use u USING (pool) WHERE q.place <= u.size - u.running
), ready AS NOT MATERIALIZED (  -- inlined in each order's branch: the first order's stops at its limit
    SELECT j.id, j.actor, j.priority, j.created_at FROM jobs j
    WHERE j.provider_type = %(provider)s AND j.state = 'PENDING' AND j.admitted_at IS NULL
      AND j.id IS DISTINCT FROM %(joining)s::uuid AND j.held_by IS NULL AND hodei.in_line(j.spec, j.retry_at)
      AND (coalesce(j.spec ->> 'array_limit', '0') = '0' OR j.id IN (SELECT id FROM limited))
      AND (j.actor IS NULL OR j.actor NOT IN (SELECT actor FROM submitter_use) OR j.id IN (SELECT id FROM submitted))
      AND (coalesce(j.spec ->> 'pool', '') = '' OR j.id IN (SELECT id FROM pooled))
), fair_use AS MATERIALIZED (  -- the fair order's: each submitter with jobs queued, and its use
    SELECT * FROM hodei.queued_use(%(provider)s, %(recent)s) WHERE %(fair)s
)
(SELECT r.id FROM ready r WHERE NOT %(fair)s ORDER BY r.priority DESC, r.created_at, r.id LIMIT %(limit)s)
UNION ALL
(SELECT t.id FROM fair_use u CROSS JOIN LATERAL (  -- the lowest turns are among each submitter's first few
     SELECT r.id, r.priority, r.created_at, u.used + row_number() OVER (ORDER BY r.priority DESC, r.created_at, r.id) AS turn
     FROM ((SELECT r.id, r.priority, r.created_at FROM ready r WHERE r.actor = u.actor
            ORDER BY r.priority DESC, r.created_at, r.id LIMIT %(limit)s)
           UNION ALL
           (SELECT r.id, r.priority, r.created_at FROM ready r WHERE u.actor IS NULL AND r.actor IS NULL
            ORDER BY r.priority DESC, r.created_at, r.id LIMIT %(limit)s)) r
 ) t
 ORDER BY t.priority DESC, t.turn, t.created_at, t.id
 LIMIT %(limit)s);

-- name: asked_resources
-- What jobs ask for (--cpu, --memory), where their provider's resources are limited
-- (`provider capacity --cpus --memory`): the next in line (hodei.admission.Capacity.fitting),
-- and the queue's as people see it (why one waits).
SELECT id, coalesce((spec -> 'resources' ->> 'cpu_cores')::float8, 0) AS cpu_cores,
       coalesce((spec -> 'resources' ->> 'memory_bytes')::bigint, 0) AS memory_bytes
FROM jobs WHERE id = ANY(%s::uuid[]);

-- name: lock_pool
-- A pool's admissions, one round at a time whatever the provider (held to the commit): a
-- round counts the pool's jobs admitted by other providers' rounds once they committed.
-- Class 11, its own: class 8 is the servers' instance locks, held for a server's life (a pool
-- whose name hashed as a server's id would wait for that server to stop).
SELECT pg_advisory_xact_lock(11, hashtext(%s));

-- part: queue_lines
-- Every job waiting in the queue, in its provider's line (in_line) or, while out of line, why: held (`job hold`: by whom, why), the time it
-- begins (--begin), a job it starts after (--after: that job's id, state and the condition
-- asked of it), its array's limit (`--array …%N`: the limit, its array's jobs admitted and
-- not ended, and its place among its array's ready jobs), its submitter's limit (`limit
-- set`: the limit, the submitter's jobs admitted and not ended, and its place among its
-- ready jobs of its provider), or its pool's size (`--pool`: the size, NULL for no such
-- pool, its jobs admitted and not ended, and its place among the pool's ready jobs of its
-- provider): out of line past a limit, as an admission round counts (next_in_queue); its turn
-- in line in next_in_queue's order (`fair`: each submitter's turn).
WITH queued AS (
    SELECT id, name, provider_type, priority, created_at, retry_at, held_by, hold_reason,
           nullif(spec ->> 'begin_at', '')::timestamptz AS begin_at,
           CASE WHEN spec -> 'after' <> '{}' THEN hodei.unmet_after(spec) END AS waiting_for,  -- most wait for none
           coalesce((spec ->> 'array_limit')::int, 0) AS array_limit, spec -> 'labels' ->> 'hodei.io/array' AS array_id,
           coalesce(spec ->> 'pool', '') AS pool, actor AS submitter
    FROM jobs
    WHERE state = 'PENDING' AND admitted_at IS NULL
), running AS MATERIALIZED (  -- counted once an array with a limit
    SELECT a.array_id, hodei.array_running(a.array_id) AS running
    FROM (SELECT DISTINCT array_id FROM queued WHERE array_limit > 0) a
), places AS (  -- a limited array's jobs ready to go, in the queue's order: next_in_queue's rule
    SELECT id, row_number() OVER (PARTITION BY array_id ORDER BY priority DESC, created_at, id) AS array_place
    FROM queued WHERE array_limit > 0 AND held_by IS NULL AND waiting_for IS NULL AND coalesce(begin_at <= now(), TRUE)
), lined AS NOT MATERIALIZED (  -- all but its submitter and its pool that holds a job back
    SELECT q.*, coalesce(r.running, 0) AS array_running, p.array_place,
           q.held_by IS NULL AND q.waiting_for IS NULL AND coalesce(q.begin_at <= now(), TRUE)
           AND (q.array_limit = 0 OR r.running + p.array_place <= q.array_limit) AS array_lets_go
    FROM queued q
    LEFT JOIN running r ON q.array_limit > 0 AND r.array_id = q.array_id
    LEFT JOIN places p ON q.array_limit > 0 AND p.id = q.id
), pool_use AS MATERIALIZED (  -- counted once a pool
    SELECT p.pool, hodei.pool_running(p.pool) AS running, hodei.pool_size(p.pool) AS size
    FROM (SELECT DISTINCT pool FROM queued WHERE pool <> '') p
), submitter_use AS MATERIALIZED (  -- once a submitter (none until a limit is set, or the order is fair)
    SELECT submitter, hodei.submitter_limit(submitter) AS jobs, hodei.submitter_running(submitter) AS running,
           CASE WHEN %(fair)s THEN hodei.submitter_use(submitter, %(recent)s) END AS used
    FROM (SELECT DISTINCT submitter FROM queued WHERE (%(fair)s OR hodei.submitter_limits_set())) s
    WHERE submitter IS NOT NULL
), submitter_places AS (  -- a limited submitter's jobs of a provider ready to go: next_in_queue's rule
    SELECT l.id, u.jobs AS submitter_limit, u.running AS submitter_running,
           row_number() OVER (PARTITION BY provider_type, submitter ORDER BY priority DESC, created_at, id)
               AS submitter_place
    FROM lined l JOIN submitter_use u USING (submitter) LEFT JOIN pool_use pu ON l.pool <> '' AND pu.pool = l.pool
    WHERE hodei.submitter_limits_set() AND u.jobs IS NOT NULL AND l.array_lets_go
      AND (l.pool = '' OR pu.running < coalesce(pu.size, 0))
), submitted AS NOT MATERIALIZED (  -- all but its pool that holds a job back
    SELECT l.*, sp.submitter_limit, coalesce(sp.submitter_running, 0) AS submitter_running, sp.submitter_place,
           l.array_lets_go AND coalesce(sp.submitter_place <= sp.submitter_limit - sp.submitter_running, TRUE) AS lets_go
    FROM lined l LEFT JOIN submitter_places sp ON sp.id = l.id
), pool_places AS (  -- a pool's jobs of a provider that nothing else holds back: next_in_queue's rule
    SELECT l.id, u.size AS pool_size, u.running AS pool_running,
           row_number() OVER (PARTITION BY provider_type, pool ORDER BY priority DESC, created_at, id)
               AS pool_place
    FROM submitted l JOIN pool_use u USING (pool)
    WHERE l.pool <> '' AND l.lets_go
), placed AS (  -- one join for the jobs of pools (a join over every queued job costs 3 ms in 10,000)
    SELECT l.*, pp.pool_size, coalesce(pp.pool_running, 0) AS pool_running, pp.pool_place,
           l.lets_go AND (l.pool = '' OR pp.pool_place <= coalesce(pp.pool_size, 0) - pp.pool_running) AS in_line
    FROM submitted l
    LEFT JOIN pool_places pp ON l.pool <> '' AND pp.id = l.id
), turned AS (  -- the fair order's turn of a job in line: next_in_queue's rule
    SELECT placed.*, used, CASE WHEN %(fair)s THEN coalesce(used, 0)
               + row_number() OVER (PARTITION BY provider_type, in_line, submitter ORDER BY priority DESC, created_at, id)
           ELSE 0 END AS turn
    FROM placed LEFT JOIN submitter_use USING (submitter)
)

-- name: queued_jobs
-- The queue as people see it (`queue`, `job get` of a queued job): every waiting job with
-- its place in its provider's line, or why it is out of line.
@queue_lines
SELECT id::text AS job_id, name, coalesce(provider_type, '') AS provider, priority, created_at, retry_at,
       held_by, coalesce(hold_reason, '') AS hold_reason, CASE WHEN begin_at > now() THEN begin_at END AS begin_at,
       waiting_for, array_limit, array_running, array_place, coalesce(submitter, '') AS submitter, submitter_limit,
       submitter_running, submitter_place, pool, pool_size, pool_running, pool_place, turn, coalesce(used, 0) AS used,
       CASE WHEN in_line THEN
           row_number() OVER (PARTITION BY provider_type, in_line ORDER BY priority DESC, turn, created_at, id)
       ELSE 0 END AS position
FROM turned
ORDER BY provider_type, NOT in_line, position, priority DESC, created_at, id
LIMIT %(limit)s;

-- name: waiting_in_line
-- Each provider's jobs in its line (waiting for its capacity, nothing else holding them back)
-- and how long the oldest has waited: a line that does not move (the metrics).
@queue_lines
SELECT coalesce(provider_type, '') AS provider, count(*) AS jobs,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM turned
WHERE in_line
GROUP BY provider_type;

-- part: child_not_ended
-- Jobs `c` not ended that a job submitted with its API token (hodei.io/parent): the predicate
-- of idx_jobs_children_not_ended (sql/038), which the planner uses only when it is implied.
c.spec -> 'labels' ? 'hodei.io/parent' AND c.state IN ('PENDING', 'ASSIGNED', 'RUNNING')

-- name: children_of_cancelled
-- Such jobs whose job is CANCELLED: they are cancelled with it, oldest first.
SELECT c.id::text AS job_id, p.id::text AS parent_id
FROM jobs c JOIN jobs p ON p.id = hodei.job_id_of(c.spec -> 'labels' ->> 'hodei.io/parent')
WHERE
    @child_not_ended
  AND p.state = 'CANCELLED'
ORDER BY c.created_at
LIMIT %(limit)s;

-- name: children_not_ended
-- How many of them this job has (`job cancel` says they go with it).
SELECT count(*) FROM jobs c
WHERE
    @child_not_ended
  AND c.spec -> 'labels' ->> 'hodei.io/parent' = %s;

-- name: never_started_dependents
-- Queued jobs one of whose --after jobs ended otherwise than asked: they never will start.
SELECT j.id::text AS job_id, d.job_id AS after_id, d.condition, d.state AS after_state
FROM jobs j CROSS JOIN LATERAL hodei.after_states(j.spec) d
WHERE j.state = 'PENDING' AND j.admitted_at IS NULL AND hodei.after_met(d.condition, d.state) IS FALSE
ORDER BY j.created_at
LIMIT %(limit)s;

-- Retention ------------------------------------------------------------------------

-- name: delete_old_outbox_rows
-- A batch of published rows past the retention (the events stay in domain_events).
DELETE FROM outbox_events WHERE id IN (
    SELECT id FROM outbox_events
    WHERE status = 'PUBLISHED' AND published_at < now() - make_interval(secs => %s)
    LIMIT %s
);

-- name: expired_job_artifacts
-- Jobs whose own artifact expiry (--artifacts-expire) has passed since they ended, whose
-- artifacts are still there (stored, and neither they nor the log expired since); none
-- older than the log's retention (those went with their log).
-- Each candidate's own events are read by its id (a few dozen), never the log by type.
SELECT j.id FROM jobs j
CROSS JOIN LATERAL (
    SELECT bool_or(e.event_type = 'JobArtifactsStored') AS stored,
           bool_or(e.event_type IN ('JobArtifactsExpired', 'JobLogsExpired')) AS gone
    FROM domain_events e WHERE e.aggregate_id = j.id::text
) k
WHERE coalesce((j.spec ->> 'artifacts_expire_seconds')::float8, 0) > 0
  AND j.completed_at > now() - make_interval(secs => %(log_seconds)s)
  AND j.completed_at < now() - make_interval(secs => (j.spec ->> 'artifacts_expire_seconds')::float8)
  AND k.stored AND NOT k.gone
ORDER BY j.completed_at
LIMIT %(limit)s;

-- name: expired_job_logs
SELECT job_id FROM job_log_files WHERE created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s;

-- Sagas for the operator ---------------------------------------------------------

-- name: list_sagas
SELECT id, saga_type, state, correlation_id, attempt, current_step, error_message, started_at, completed_at
FROM sagas
WHERE (%(state)s::varchar IS NULL OR state = %(state)s::varchar)
  AND (%(saga_type)s::varchar IS NULL OR saga_type = %(saga_type)s::varchar)
  AND (%(job_id)s::varchar IS NULL OR correlation_id = %(job_id)s::varchar)
ORDER BY started_at DESC, id
LIMIT %(limit)s;

-- name: get_saga
SELECT id, saga_type, state, correlation_id, attempt, current_step, error_message, started_at, completed_at
FROM sagas
WHERE id = %s;

-- name: sagas_of_job
SELECT id, saga_type, state, correlation_id, attempt, current_step, error_message, started_at, completed_at
FROM sagas
WHERE correlation_id = %s
ORDER BY started_at, id;

-- name: steps_of_sagas
SELECT saga_id, step_name, step_order, state, retry_count, error_message, started_at, completed_at
FROM saga_steps
WHERE saga_id = ANY(%s::uuid[])
ORDER BY saga_id, step_order;

-- name: audit_of_sagas
SELECT saga_id, event_type, step_name, message, occurred_at
FROM saga_audit_events
WHERE saga_id = ANY(%s::uuid[])
ORDER BY saga_id, occurred_at, id;

-- name: workers_of_job
SELECT w.id, w.attempt, w.state, w.provider_type, w.provider_resource_id, w.error_message, w.created_at,
       w.registered_at, l.last_seen_at
FROM workers w LEFT JOIN hodei.worker_liveness l ON l.worker_id = w.id
WHERE w.job_id = %s
ORDER BY w.created_at, w.id;

-- name: events_of_job_aggregate
-- A job's own events: what its row in jobs is made of.
SELECT id, occurred_at, event_type, aggregate_id, aggregate_type, aggregate_version,
       correlation_id, actor, payload, topic, position
FROM domain_events
WHERE aggregate_id = %(job_id)s
ORDER BY position;

-- name: events_of_job
-- Every event of a job's flow (its own, its workers', its sagas'), in commit order.
SELECT id, occurred_at, event_type, aggregate_id, aggregate_type, aggregate_version,
       correlation_id, actor, payload, topic, position
FROM domain_events
WHERE correlation_id = %(job_id)s OR aggregate_id = %(job_id)s
ORDER BY position;

-- Dead letters --------------------------------------------------------------------

-- name: dead_letters
-- A saga's row of moves is named by its last move, the one its delivery was for
-- (hodei.relay routes such a row by its last event): "SagaMoved: StepStarted wait_for_result".
SELECT o.id::text, o.position,
       CASE WHEN o.event_type = 'SagaMoved'
            THEN 'SagaMoved: ' || concat_ws(' ', e.payload -> 'events' -> -1 ->> 'event_type',
                                              e.payload -> 'events' -> -1 -> 'payload' ->> 'step_name')
            ELSE o.event_type END,
       o.aggregate_type, o.aggregate_id, coalesce(e.correlation_id, '') AS job_id,
       o.attempts, coalesce(o.last_error, '') AS last_error, o.created_at
FROM outbox_events o JOIN domain_events e ON e.id = o.id
WHERE o.status = 'DEAD_LETTER'
ORDER BY o.position
LIMIT %s;

-- name: redrive_dead_letters
-- Back in the queue with every attempt again (the relay's next poll claims them); the
-- last error stays, also once a delivery succeeds: what made the row a dead letter.
UPDATE outbox_events
SET status = 'PENDING', attempts = 0, available_at = now(), claimed_by = NULL, lease_until = NULL
WHERE status = 'DEAD_LETTER' AND (%(all)s OR id = ANY(%(ids)s::uuid[]))
RETURNING id::text;

-- Online rebuild ---------------------------------------------------------------------

-- name: export_snapshot
-- A transaction's snapshot, for another connection to read in (replay --verify's log reader).
SELECT pg_export_snapshot();

-- name: read_model_constraints
-- Keys and foreign keys of the read models, as their live definitions (read with the
-- default search_path, so a foreign key names its table unqualified).
SELECT t.relname, c.conname, pg_get_constraintdef(c.oid), c.contype
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public' AND t.relname = ANY(%s) AND c.contype IN ('p', 'u', 'f')
ORDER BY 1, 2;

-- name: read_model_plain_indexes
-- The read models' indexes that no constraint owns.
SELECT i.indexdef
FROM pg_indexes i
WHERE i.schemaname = 'public' AND i.tablename = ANY(%s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.connamespace = 'public'::regnamespace)
ORDER BY i.indexname;

-- name: read_model_statistics
-- The read models' extended statistics (sql/021, sql/024): each one's name, table and what it
-- is on. replay --apply makes them again on the tables it swaps in (a table's go with it).
SELECT s.stxname AS name, t.relname AS table_name, pg_get_statisticsobjdef_columns(s.oid) AS columns
FROM pg_statistic_ext s JOIN pg_class t ON t.oid = s.stxrelid
WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY(%s)
ORDER BY s.stxname;

-- name: jobs_in_id_range
-- Ids starting with a prefix people typed: a range of the primary key (two at most).
SELECT id FROM jobs WHERE id BETWEEN %s AND %s ORDER BY id LIMIT 2;

-- name: sagas_in_id_range
SELECT id FROM sagas WHERE id BETWEEN %s AND %s ORDER BY id LIMIT 2;

-- name: job_created_at
SELECT created_at FROM jobs WHERE id = %s;

-- name: step_started_at
SELECT started_at FROM saga_steps WHERE saga_id = %s AND step_order = %s;

-- name: saga_type_of
SELECT saga_type FROM sagas WHERE id = %s;

-- name: worker_provider_of
SELECT provider_type FROM workers WHERE id = %s;

-- name: cron_job_versions
-- Every cron job's latest version, a deleted one's left out (idx_domain_events_cron_jobs:
-- an index-only scan).
SELECT aggregate_id, version FROM (
    SELECT DISTINCT ON (aggregate_id) aggregate_id, aggregate_version AS version, event_type
    FROM domain_events WHERE aggregate_type = 'CronJob'
    ORDER BY aggregate_id, aggregate_version DESC
) AS latest
WHERE event_type <> 'CronJobDeleted';

-- name: cron_jobs_not_ended
-- The jobs of a cron job that have not ended (idx_jobs_cron).
SELECT id AS job_id, state, created_at FROM jobs
WHERE spec -> 'labels' ? 'hodei.io/cron' AND spec -> 'labels' ->> 'hodei.io/cron' = %s
  AND state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')
ORDER BY created_at;

-- part: run_rank
-- A job's rank in the state of the jobs it was submitted with (a cron job's run, a pipeline),
-- lowest first: the furthest on of those not ended; else FAILED or TIMEOUT; else CANCELLED
-- by someone; else SUCCEEDED; last (7) a branch not taken: cancelled by the platform, `system`,
-- because a job it starts after ended otherwise than asked (hodei.store.readmodels.SKIPPED).
CASE j.state
    WHEN 'RUNNING' THEN 0 WHEN 'ASSIGNED' THEN 1 WHEN 'PENDING' THEN 2 WHEN 'FAILED' THEN 3 WHEN 'TIMEOUT' THEN 4
    WHEN 'CANCELLED' THEN CASE
        WHEN j.cancelled_by = 'system' AND EXISTS (
            SELECT 1 FROM hodei.after_states(j.spec) AS a WHERE NOT hodei.after_met(a.condition, a.state)
        ) THEN 7
        ELSE 5 END
    ELSE 6 END

-- name: workflow_jobs
-- A pipeline's jobs (hodei.io/workflow: its first job's id), as submitted and then their
-- copies, each with its rank in the pipeline's state (run_rank; idx_jobs_workflow).
SELECT
    @job_columns
    ,
    @run_rank
    AS rank
FROM jobs j LEFT JOIN job_log_files l ON l.job_id = j.id
WHERE j.spec -> 'labels' ? 'hodei.io/workflow' AND j.spec -> 'labels' ->> 'hodei.io/workflow' = %s
ORDER BY j.created_at, j.id;

-- name: cron_jobs_newest
-- Each cron job's newest run: (name, its first job's id, the run's state, when its first job
-- was created). A run is the jobs of one time: a pipeline's carry their first job's id in
-- hodei.io/workflow, a job alone is its own run. Its state: that of its job of the lowest
-- run_rank (a branch not taken, which `job run --file --wait` counts 0, comes last). A job
-- retried (`job retry`, `--workflow`) counts as its copy: a copy carries the run's labels,
-- and the job it copied is left out (idx_jobs_retry_of). Each read through idx_jobs_cron: the
-- run's jobs are made after its first.
WITH newest AS (
    SELECT DISTINCT ON (spec -> 'labels' ->> 'hodei.io/cron')
           spec -> 'labels' ->> 'hodei.io/cron' AS name,
           COALESCE(hodei.job_id_of(spec -> 'labels' ->> 'hodei.io/workflow'), id) AS run_id
    FROM jobs
    WHERE spec -> 'labels' ? 'hodei.io/cron' AND spec -> 'labels' ->> 'hodei.io/cron' = ANY(%s)
    ORDER BY spec -> 'labels' ->> 'hodei.io/cron', created_at DESC
)
SELECT newest.name, newest.run_id AS job_id, run.state, first.created_at
FROM newest
JOIN jobs AS first ON first.id = newest.run_id
CROSS JOIN LATERAL (
    SELECT j.state
    FROM jobs AS j
    WHERE j.spec -> 'labels' ? 'hodei.io/cron' AND j.spec -> 'labels' ->> 'hodei.io/cron' = newest.name
      AND j.created_at >= first.created_at
      AND (j.id = newest.run_id OR j.spec -> 'labels' ->> 'hodei.io/workflow' = newest.run_id::text)
      AND NOT EXISTS (SELECT 1 FROM jobs AS copy WHERE copy.retry_of = j.id)
    ORDER BY
        @run_rank
    LIMIT 1
) AS run;

-- name: jobs_there
-- Which of these ids are jobs (a cron job's slots that were started: hodei.cron.CronJobs.started).
SELECT id AS job_id FROM jobs WHERE id = ANY(%s::uuid[]);

-- Pools -----------------------------------------------------------------------------

-- name: pool_size
-- A pool's size; NULL: no such pool.
SELECT hodei.pool_size(%s);

-- name: submitter_limits
-- Every submitter with a limit of its own (its latest event has `jobs`: not a deletion;
-- idx_domain_events_submitter_limits) or with jobs queued or running, `*` first, or the one
-- named: each of its two limits (its own, else `*`'s: hodei.submitter_bound's reading, sql/022)
-- and whether it is its own, its jobs admitted and not ended, and its jobs waiting.
WITH own AS (
    SELECT DISTINCT ON (payload ->> 'submitter') payload ->> 'submitter' AS submitter, payload
    FROM domain_events
    WHERE aggregate_type = 'SubmitterLimit'
      AND (%(submitter)s::text IS NULL OR payload ->> 'submitter' IN (%(submitter)s::text, '*'))
    ORDER BY payload ->> 'submitter', aggregate_version DESC
), limited AS (
    SELECT submitter, payload,
           NOT coalesce(payload -> 'inherits' ? 'jobs', FALSE) AS jobs_own,
           submitter = '*' OR payload ? 'submitted' AND NOT coalesce(payload -> 'inherits' ? 'submitted', FALSE)
               AS submitted_own
    FROM own WHERE payload ? 'jobs'
), star AS (
    SELECT (payload ->> 'jobs')::int AS jobs, (payload ->> 'submitted')::int AS submitted FROM own WHERE submitter = '*'
), live AS (
    SELECT actor AS submitter, count(*) FILTER (WHERE admitted_at IS NOT NULL) AS running,
           count(*) FILTER (WHERE admitted_at IS NULL) AS queued
    FROM jobs
    WHERE state IN ('PENDING', 'ASSIGNED', 'RUNNING') AND actor IS NOT NULL
      AND (%(submitter)s::text IS NULL OR actor = %(submitter)s::text)
    GROUP BY actor
)
SELECT submitter,
       CASE WHEN s.jobs_own THEN (s.payload ->> 'jobs')::int ELSE (SELECT jobs FROM star) END AS jobs,
       coalesce(s.jobs_own, FALSE) AS own, coalesce(l.running, 0) AS running, coalesce(l.queued, 0) AS queued,
       CASE WHEN s.submitted_own THEN (s.payload ->> 'submitted')::int ELSE (SELECT submitted FROM star) END AS submitted,
       coalesce(s.submitted_own, FALSE) AS submitted_own
FROM limited s FULL JOIN live l USING (submitter)
WHERE %(submitter)s::text IS NULL OR submitter = %(submitter)s::text
ORDER BY submitter <> '*', submitter;

-- name: submitted_limit
-- A submitter's limit of jobs not ended (NULL: none), read at each of its submissions.
SELECT hodei.submitter_bound(%s, 'submitted');

-- name: lock_submissions
-- A limited submitter's submissions, one at a time (held to the commit): each counts its jobs
-- not ended after the one before wrote its own.
SELECT pg_advisory_xact_lock(10, hashtext(%s));

-- name: submitter_not_ended
-- Its jobs queued, held or running (idx_jobs_actor_not_ended).
SELECT count(*) FROM jobs WHERE actor = %s AND state IN ('PENDING', 'ASSIGNED', 'RUNNING');

-- name: lock_submitter
-- A submitter's admissions, one round at a time whatever the provider (held to the commit),
-- as lock_pool's for a pool.
SELECT pg_advisory_xact_lock(9, hashtext(%s));

-- name: pools
-- Every pool not deleted (its latest event has a size: idx_domain_events_pools), or the one
-- named, with its jobs admitted and not ended and its jobs waiting (idx_jobs_pool).
SELECT p.name, p.size, hodei.pool_running(p.name) AS running,
       (SELECT count(*) FROM jobs q
        WHERE q.spec ->> 'pool' <> '' AND q.spec ->> 'pool' = p.name
          AND q.state = 'PENDING' AND q.admitted_at IS NULL) AS queued
FROM (
    SELECT DISTINCT ON (payload ->> 'name') payload ->> 'name' AS name, (payload ->> 'size')::int AS size
    FROM domain_events
    WHERE aggregate_type = 'Pool' AND (%(name)s::text IS NULL OR payload ->> 'name' = %(name)s::text)
    ORDER BY payload ->> 'name', aggregate_version DESC
) p
WHERE p.size IS NOT NULL
ORDER BY p.name;

-- Webhooks --------------------------------------------------------------------------

-- name: webhooks
-- Every webhook not deleted, or the one whose id is given, as of a position of the log (NULL:
-- now), by name, with its messages pending, given up on and delivered
-- (idx_domain_events_webhooks, idx_webhook_deliveries_of).
SELECT w.name, w.origin, w.sealed, w.states, w.label_selector, w.changed_at, w.changed_by, w.id, w.pipelines,
       coalesce(d.pending, 0) AS pending, coalesce(d.failed, 0) AS failed, coalesce(d.delivered, 0) AS delivered
FROM (
    SELECT DISTINCT ON (aggregate_id) aggregate_id AS id, event_type,
           payload ->> 'name' AS name, payload ->> 'origin' AS origin, payload -> 'sealed' AS sealed,
           payload -> 'states' AS states, payload -> 'label_selector' AS label_selector,
           coalesce((payload ->> 'pipelines')::boolean, false) AS pipelines,
           occurred_at AS changed_at, actor AS changed_by
    FROM domain_events
    WHERE aggregate_type = 'Webhook' AND (%(id)s::text IS NULL OR aggregate_id = %(id)s::text)
      AND (%(upto)s::bigint IS NULL OR position <= %(upto)s::bigint)
    ORDER BY aggregate_id, aggregate_version DESC
) w
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE state = 'PENDING') AS pending, count(*) FILTER (WHERE state = 'FAILED') AS failed,
           count(*) FILTER (WHERE state = 'DELIVERED') AS delivered
    FROM hodei.webhook_deliveries WHERE webhook = w.name AND %(counted)s::boolean
) d ON true
WHERE w.event_type <> 'WebhookDeleted'
ORDER BY w.name;

-- name: lock_webhook_cursor
-- The log's reading for webhooks, one server at a time (held to the commit); none: another reads.
-- The reading's statements plan with index scans only: catching up over a long stretch of the
-- log (servers down a while; a history copied in), the planner read domain_events whole for the
-- few endings among its rows, where the position index reads them in order up to the 500th.
SELECT position, set_config('enable_seqscan', 'off', true) FROM hodei.webhook_cursor FOR UPDATE SKIP LOCKED;

-- name: log_head
-- The newest position: every position up to it is committed (they follow commit order).
SELECT coalesce(max(position), 0) FROM domain_events;

-- name: webhook_events
-- What a webhook may be told of (a job's start, its end), and changes to webhooks, after a
-- position up to another, in the log's order.
SELECT position, aggregate_type, aggregate_id, aggregate_version, event_type, payload
FROM domain_events
WHERE position > %(after)s AND position <= %(upto)s
  AND (aggregate_type = 'Webhook' OR (event_type = 'JobStatusChanged'
       AND payload ->> 'new_state' IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')))
ORDER BY position
LIMIT %(limit)s;

-- name: move_webhook_cursor
UPDATE hodei.webhook_cursor SET position = %s;

-- name: add_webhook_delivery
INSERT INTO hodei.webhook_deliveries (id, webhook, type, job_id, body)
VALUES (%(id)s, %(webhook)s, %(type)s, %(job_id)s, %(body)s)
ON CONFLICT (id) DO NOTHING;

-- name: claim_webhook_deliveries
-- Messages due, oldest first, each leased to this server for its attempt (a server that dies
-- mid-attempt leaves it due again when the lease ends).
UPDATE hodei.webhook_deliveries d
SET attempts = d.attempts + 1, lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
FROM (
    SELECT id FROM hodei.webhook_deliveries
    WHERE state = 'PENDING' AND next_at <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) due
WHERE d.id = due.id
RETURNING d.id, d.webhook, d.type, d.body, d.attempts;

-- name: record_webhook_attempt
UPDATE hodei.webhook_deliveries
SET state = %(state)s, next_at = now() + make_interval(secs => %(retry_in)s), lease_until = NULL,
    last_status = %(status)s, last_error = %(error)s, updated_at = now()
WHERE id = %(id)s;

-- name: webhook_deliveries
-- A webhook's newest messages, a job's, or the one whose id is given.
SELECT id, webhook, type, job_id, state, attempts, last_status, last_error, created_at, updated_at,
       CASE WHEN state = 'PENDING' THEN next_at END AS next_at
FROM hodei.webhook_deliveries
WHERE (%(webhook)s::text IS NULL OR webhook = %(webhook)s::text) AND (%(id)s::uuid IS NULL OR id = %(id)s::uuid)
  AND (%(job_id)s::uuid IS NULL OR job_id = %(job_id)s::uuid)
ORDER BY created_at DESC, id
LIMIT %(limit)s;

-- name: redeliver_webhook_delivery
-- Sent again at once, with attempts anew (a delivered one too: a receiver that lost it).
UPDATE hodei.webhook_deliveries
SET state = 'PENDING', attempts = 0, next_at = now(), lease_until = NULL, updated_at = now()
WHERE id = %s;

-- name: prune_webhook_deliveries
-- Messages delivered or given up on longer ago than the retention.
DELETE FROM hodei.webhook_deliveries
WHERE state <> 'PENDING' AND updated_at < now() - make_interval(secs => %s);

-- Audit ----------------------------------------------------------------------------

-- name: configuration_changes
-- Changes to providers, pools, submitter limits, webhooks and cron jobs, newest first
-- (idx_domain_events_configuration), each with its subject's name from the first event of
-- its aggregate (a pause, a provider's capacity, name none).
SELECT e.occurred_at AS at, coalesce(e.actor, '') AS actor, e.aggregate_type, e.event_type, e.payload,
       coalesce(f.payload ->> 'provider_type', f.payload ->> 'name', f.payload ->> 'submitter', '') AS subject
FROM domain_events e
JOIN domain_events f ON f.aggregate_id = e.aggregate_id AND f.aggregate_version = 1
WHERE e.aggregate_type IN ('Provider', 'Pool', 'SubmitterLimit', 'Webhook', 'CronJob')
  AND e.aggregate_type = ANY(%(types)s::text[])
  AND (%(actor)s::text IS NULL OR e.actor = %(actor)s::text)
  AND (%(system)s::boolean OR e.actor IS DISTINCT FROM 'system')
  AND (%(since)s::timestamptz IS NULL OR e.occurred_at >= %(since)s::timestamptz)
ORDER BY e.position DESC
LIMIT %(limit)s;

-- name: jobs_report
-- What the jobs that ended in a window used, by a grouping (hodei.report): each group's sums,
-- and the window's total first (the empty grouping set, a row even when no job ended).
WITH ended AS (
    SELECT CASE %(by)s WHEN 'submitter' THEN j.actor WHEN 'provider' THEN j.provider_type
                WHEN 'pool' THEN nullif(j.spec ->> 'pool', '') WHEN 'state' THEN j.state WHEN 'name' THEN j.name
                WHEN 'day' THEN to_char(j.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                WHEN 'week' THEN to_char(j.completed_at AT TIME ZONE 'UTC', 'IYYY-"W"IW')
                WHEN 'month' THEN to_char(j.completed_at AT TIME ZONE 'UTC', 'YYYY-MM')
                ELSE j.spec -> 'labels' ->> %(label)s::text END AS key,
           j.state, j.run_seconds, j.cpu_seconds, j.peak_memory_bytes,
           j.attempt - CASE WHEN j.started_at IS NULL THEN 1 ELSE 0 END AS attempts,  -- its last may not have begun
           coalesce((j.spec -> 'resources' ->> 'cpu_cores')::float8, 0) AS cpu_asked,
           greatest(0, extract(epoch FROM j.started_at - j.created_at)::float8) AS waited
    FROM jobs j
    WHERE j.completed_at >= %(ended_since)s::timestamptz AND j.completed_at < %(ended_until)s::timestamptz
      AND j.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')
      @job_filters
), grouped AS (
    SELECT GROUPING(key) = 1 AS total, key, count(*) AS jobs,
           count(*) FILTER (WHERE state = 'SUCCEEDED') AS succeeded,
           count(*) FILTER (WHERE state = 'FAILED') AS failed,
           count(*) FILTER (WHERE state = 'CANCELLED') AS cancelled,
           count(*) FILTER (WHERE state = 'TIMEOUT') AS timed_out,
           coalesce(sum(attempts), 0)::bigint AS attempts,
           coalesce(sum(run_seconds), 0) AS run_seconds,
           sum(cpu_seconds) AS cpu_seconds, count(cpu_seconds) AS jobs_measured,
           sum(cpu_asked * run_seconds) FILTER (WHERE cpu_asked > 0) AS cpu_asked_seconds,
           sum(cpu_seconds) FILTER (WHERE cpu_asked > 0)
               / nullif(sum(cpu_asked * run_seconds) FILTER (WHERE cpu_asked > 0 AND cpu_seconds IS NOT NULL), 0)
               AS cpu_efficiency,
           max(peak_memory_bytes) AS peak_memory_bytes,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY waited) AS wait_p50_seconds
    FROM ended
    GROUP BY GROUPING SETS ((key), ())
)
SELECT *, (count(*) FILTER (WHERE NOT total) OVER ())::int AS groups
FROM grouped
ORDER BY total DESC, CASE WHEN %(by)s IN ('day', 'week', 'month') THEN key END, run_seconds DESC, jobs DESC,
         key NULLS LAST
LIMIT %(most)s + 1;
