-- Caller identity, secrets that can be shredded, and the servers sharing this database.
-- All of it lives in schema `hodei`: none of it is a projection of events.

-- API tokens for people and scripts. Only a SHA-256 of the token is kept: the token is
-- 256 random bits, so a fast hash is enough and a leaked table gives no token away.
-- Revoked tokens stay (revoked_at): once a token was ever created, authentication is on.
CREATE TABLE hodei.api_tokens (
    name        VARCHAR(64) PRIMARY KEY,
    role        VARCHAR(16) NOT NULL CHECK (role IN ('read', 'submit', 'operate', 'admin')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_by  VARCHAR(255) NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

-- One AES-256 key per job that has secrets. The event log keeps the job's secrets sealed
-- under this key; deleting the row (purge) makes them unrecoverable while the log stays
-- append-only.
CREATE TABLE hodei.job_keys (
    job_id     UUID PRIMARY KEY,
    key        BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every server process sharing the database: what it can run, where its workers dial,
-- and when it last said it was alive.
CREATE TABLE hodei.server_instances (
    server_id      VARCHAR(255) PRIMARY KEY,
    providers      TEXT[] NOT NULL,
    worker_address VARCHAR(255) NOT NULL,
    api_address    VARCHAR(255) NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who cancelled a job (the submitter is `actor`, from JobCreated).
ALTER TABLE jobs ADD COLUMN cancelled_by VARCHAR(255);
