-- Commands run beside a running job's own (`job exec`): each {index, attempt, argv,
-- timeout_seconds, by, requested_at} (JobExecRequested), and once it ended exit_code,
-- message, stdout_bytes, stderr_bytes, ended_at (JobExecEnded), in order. A worker's stream
-- sends its attempt's that have not ended (hodei.server.worker_channel); the worker runs
-- each index once, so a stream opened again after a reconnection sends them again safely.
ALTER TABLE jobs ADD COLUMN execs JSONB NOT NULL DEFAULT '[]'::jsonb;
