-- A running job's signals (`job signal`, JobSignalled): each [attempt, name], in order. A
-- worker's stream sends its attempt's (hodei.server.worker_channel); the worker delivers each
-- index once, so a stream opened again after a reconnection sends them all again safely.
ALTER TABLE jobs ADD COLUMN signals JSONB NOT NULL DEFAULT '[]'::jsonb;
