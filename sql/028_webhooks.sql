-- Webhooks (hodei.domain.webhook, `webhook set NAME --url URL`): each job that ends is POSTed,
-- signed, to every webhook whose states and selector it matches. Webhooks have no read model:
-- their events (each naming its webhook) are read from the log, as pools' are.
CREATE INDEX idx_domain_events_webhooks ON domain_events (aggregate_id, aggregate_version DESC)
    WHERE aggregate_type = 'Webhook';

-- How far the log has been read for jobs that ended (hodei.webhooks.Webhooks.enqueue): one
-- row, locked by the server that reads on (others skip it). Jobs that ended before this
-- version are nobody's to tell.
CREATE TABLE hodei.webhook_cursor (
    only_row  BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    position  BIGINT NOT NULL
);
INSERT INTO hodei.webhook_cursor (position) SELECT coalesce(max(position), 0) FROM domain_events;

-- Each message to a webhook, until it was answered 2xx or given up on: an outbox of its own
-- (its body, signed at each attempt, is what the job was when it ended). Its id is the
-- message's `webhook-id`, the same at every attempt, for receivers to drop a repeat.
CREATE TABLE hodei.webhook_deliveries (
    id           UUID PRIMARY KEY,
    webhook      TEXT NOT NULL,
    type         TEXT NOT NULL,
    job_id       UUID,
    body         TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until  TIMESTAMPTZ,
    last_status  INTEGER,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_webhook_deliveries_due ON hodei.webhook_deliveries (next_at) WHERE state = 'PENDING';
CREATE INDEX idx_webhook_deliveries_of ON hodei.webhook_deliveries (webhook, created_at DESC);
