-- The relay serves older jobs first. Each outbox row carries its origin: the position of
-- the first event of its correlation (its job; its own position when it has none). The
-- relay claims and runs rows by origin, so a job's next step is not queued behind the
-- current step of every job submitted after it: in a burst, the first jobs finish in about
-- their own latency instead of the whole burst's.
ALTER TABLE outbox_events ADD COLUMN origin BIGINT;
UPDATE outbox_events SET origin = position;
ALTER TABLE outbox_events ALTER COLUMN origin SET NOT NULL;

-- A job's first position is the first entry of this index.
CREATE INDEX idx_domain_events_correlation_position ON domain_events (correlation_id, position);
DROP INDEX idx_domain_events_correlation_id;
