-- The silence after which each worker is lost: its server stretches heartbeat interval
-- and timeout alike once it would hear too many heartbeats (HODEI_MAX_HEARTBEATS_PER_SECOND).
-- NULL: the configured HODEI_HEARTBEAT_TIMEOUT (rows written before this column existed).
ALTER TABLE hodei.worker_liveness ADD COLUMN timeout_seconds DOUBLE PRECISION;
