-- What a running job uses now (`job top`), as its worker's last heartbeat said: CPU cores on
-- average since the heartbeat before, memory held, and when it said so (NULL: it has said
-- nothing, an agent older than this, or one that cannot read its cgroup). Kept with the
-- worker's liveness, not in the event log: a sample every few seconds is not a change of
-- state, and it goes with the worker.
ALTER TABLE hodei.worker_liveness
    ADD COLUMN cpu_cores DOUBLE PRECISION,
    ADD COLUMN memory_bytes BIGINT,
    ADD COLUMN usage_at TIMESTAMPTZ;
