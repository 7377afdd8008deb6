-- Hodei Jobs schema. The nine tables of the seed live in `public`; everything else
-- (migration ledger, worker liveness, secrets) lives in schema `hodei`.
-- CHECK constraints list exactly the states of hodei/domain (a test compares them).

CREATE SCHEMA IF NOT EXISTS hodei;

-- The one event log: the eventsourcing recorder appends here (hodei/store/recorder.py).
CREATE TABLE domain_events (
    id                UUID PRIMARY KEY,
    occurred_at       TIMESTAMPTZ NOT NULL,
    event_type        VARCHAR(255) NOT NULL,
    aggregate_id      VARCHAR(255) NOT NULL,
    correlation_id    VARCHAR(255),
    actor             VARCHAR(255),
    payload           JSONB NOT NULL,
    aggregate_type    VARCHAR(64) NOT NULL,
    -- Optimistic concurrency: two writers of one aggregate version cannot both commit.
    aggregate_version BIGINT NOT NULL,
    -- Global position, drawn under an EXCLUSIVE table lock, so it follows commit order.
    position          BIGSERIAL NOT NULL,
    -- The event class (module:Class.Event), used to rebuild the event object.
    topic             TEXT NOT NULL,
    CONSTRAINT domain_events_aggregate_version_key UNIQUE (aggregate_id, aggregate_version),
    CONSTRAINT domain_events_position_key UNIQUE (position)
);
CREATE INDEX idx_domain_events_correlation_id ON domain_events (correlation_id);
CREATE INDEX idx_domain_events_occurred_at ON domain_events (occurred_at);

CREATE FUNCTION hodei.forbid_event_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'domain_events is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER domain_events_append_only BEFORE UPDATE OR DELETE ON domain_events
    FOR EACH ROW EXECUTE FUNCTION hodei.forbid_event_changes();
CREATE TRIGGER domain_events_no_truncate BEFORE TRUNCATE ON domain_events
    FOR EACH STATEMENT EXECUTE FUNCTION hodei.forbid_event_changes();

-- One row per event, written in the event's transaction; the relay works through them.
-- The payload is not copied: the relay reads it from domain_events.
CREATE TABLE outbox_events (
    id             UUID PRIMARY KEY REFERENCES domain_events (id),
    position       BIGINT NOT NULL UNIQUE,
    aggregate_id   VARCHAR(255) NOT NULL,
    aggregate_type VARCHAR(64) NOT NULL,
    event_type     VARCHAR(255) NOT NULL,
    status         VARCHAR(20) NOT NULL DEFAULT 'PENDING'
                   CHECK (status IN ('PENDING', 'PROCESSING', 'PUBLISHED', 'DEAD_LETTER')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    available_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by     VARCHAR(255),
    lease_until    TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at   TIMESTAMPTZ
);
CREATE INDEX idx_outbox_events_open ON outbox_events (position)
    WHERE status IN ('PENDING', 'PROCESSING');
CREATE INDEX idx_outbox_events_open_by_aggregate ON outbox_events (aggregate_id, position)
    WHERE status IN ('PENDING', 'PROCESSING');
CREATE INDEX idx_outbox_events_dead_letter ON outbox_events (position) WHERE status = 'DEAD_LETTER';

-- Read models: projections of domain_events, rebuilt by `hodei-server replay`.
CREATE TABLE jobs (
    id                   UUID PRIMARY KEY,
    name                 VARCHAR(255) NOT NULL,
    state                VARCHAR(20) NOT NULL
                         CHECK (state IN ('PENDING', 'ASSIGNED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')),
    spec                 JSONB NOT NULL,
    selected_provider_id UUID,
    provider_type        VARCHAR(32),
    worker_id            UUID,
    exit_code            INTEGER,
    error_message        TEXT,
    attempt              INTEGER NOT NULL,
    max_attempts         INTEGER NOT NULL,
    correlation_id       VARCHAR(255),
    actor                VARCHAR(255),
    created_at           TIMESTAMPTZ NOT NULL,
    started_at           TIMESTAMPTZ,
    completed_at         TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_jobs_state ON jobs (state);
CREATE INDEX idx_jobs_created_at ON jobs (created_at);

CREATE TABLE workers (
    id                   UUID PRIMARY KEY,
    job_id               UUID NOT NULL,
    attempt              INTEGER NOT NULL,
    state                VARCHAR(20) NOT NULL
                         CHECK (state IN ('CREATING', 'CONNECTING', 'READY', 'BUSY', 'FAILED', 'TERMINATING', 'TERMINATED')),
    provider_id          UUID NOT NULL,
    provider_type        VARCHAR(32) NOT NULL,
    provider_resource_id VARCHAR(255),
    error_message        TEXT,
    registered_at        TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_workers_job_id ON workers (job_id);
CREATE INDEX idx_workers_state ON workers (state);
CREATE INDEX idx_workers_created_at ON workers (created_at);

CREATE TABLE sagas (
    id             UUID PRIMARY KEY,
    saga_type      VARCHAR(32) NOT NULL CHECK (saga_type IN ('PROVISIONING', 'EXECUTION', 'RECOVERY')),
    state          VARCHAR(20) NOT NULL CHECK (state IN ('IN_PROGRESS', 'COMPENSATING', 'COMPLETED', 'FAILED')),
    correlation_id VARCHAR(255) NOT NULL,
    attempt        INTEGER NOT NULL,
    actor          VARCHAR(255),
    current_step   VARCHAR(64),
    error_message  TEXT,
    started_at     TIMESTAMPTZ NOT NULL,
    completed_at   TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_sagas_correlation_id ON sagas (correlation_id);
CREATE INDEX idx_sagas_open ON sagas (state) WHERE state IN ('IN_PROGRESS', 'COMPENSATING');

CREATE TABLE saga_steps (
    id            UUID PRIMARY KEY,
    saga_id       UUID NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    step_name     VARCHAR(64) NOT NULL,
    step_order    INTEGER NOT NULL,
    state         VARCHAR(20) NOT NULL
                  CHECK (state IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'COMPENSATING', 'COMPENSATED', 'COMPENSATION_FAILED')),
    retry_count   INTEGER NOT NULL DEFAULT 0,
    error_message TEXT,
    -- When a running step times out, or when a failed step is retried.
    deadline_at   TIMESTAMPTZ,
    started_at    TIMESTAMPTZ,
    completed_at  TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT saga_steps_order_key UNIQUE (saga_id, step_order)
);
CREATE INDEX idx_saga_steps_deadline ON saga_steps (deadline_at) WHERE state IN ('IN_PROGRESS', 'FAILED');

CREATE TABLE saga_audit_events (
    id          UUID PRIMARY KEY,
    saga_id     UUID NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    event_type  VARCHAR(50) NOT NULL,
    step_name   VARCHAR(64),
    message     TEXT NOT NULL,
    payload     JSONB NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_saga_audit_events_saga ON saga_audit_events (saga_id, occurred_at);

CREATE TABLE job_log_files (
    id          UUID PRIMARY KEY,
    job_id      UUID NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    storage_uri TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL CHECK (size_bytes >= 0),
    entry_count INTEGER NOT NULL CHECK (entry_count >= 0),
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE provider_configs (
    id             UUID PRIMARY KEY,
    name           VARCHAR(64) NOT NULL UNIQUE,
    provider_type  VARCHAR(32) NOT NULL UNIQUE CHECK (provider_type IN ('docker', 'kubernetes', 'local')),
    status         VARCHAR(20) NOT NULL CHECK (status IN ('ACTIVE', 'DISABLED')),
    health         VARCHAR(20) NOT NULL CHECK (health IN ('UNKNOWN', 'HEALTHY', 'UNHEALTHY')),
    health_message TEXT,
    config         JSONB NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

-- Operational state that is not a projection of events.
-- Heartbeats would flood the event log; liveness is kept here instead.
CREATE TABLE hodei.worker_liveness (
    worker_id    UUID PRIMARY KEY,
    server_id    VARCHAR(255) NOT NULL,
    connected    BOOLEAN NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);

-- The secret that signs worker tokens, made once per database.
CREATE TABLE hodei.secrets (
    name       VARCHAR(64) PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- gen_random_uuid() draws from pg_strong_random(); two of them hashed give a 256-bit key.
INSERT INTO hodei.secrets (name, value)
VALUES ('worker_token_key', encode(sha256((gen_random_uuid()::text || gen_random_uuid()::text)::bytea), 'hex'));
-- Labels every container, pod and process this database's servers create, so a
-- reconciler never touches workers of another installation sharing the engine.
INSERT INTO hodei.secrets (name, value) VALUES ('installation_id', gen_random_uuid()::text);

-- Raises unless its argument is true: lets one statement abort a transaction, so a
-- pipelined write needs no round trip to check a row count.
CREATE FUNCTION hodei.require(condition boolean, message text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT condition THEN
        RAISE EXCEPTION USING MESSAGE = message, ERRCODE = 'P0001';
    END IF;
    RETURN true;
END;
$$;
