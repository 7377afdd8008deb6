-- Admission control: jobs wait in a queue for their provider's capacity.

-- Jobs leave the queue by priority (higher first), then in submission order.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- When the job's current attempt got a slot of its provider (NULL: it waits).
ALTER TABLE jobs ADD COLUMN admitted_at TIMESTAMPTZ;

-- The queue of each provider, in the order jobs leave it.
CREATE INDEX idx_jobs_queue ON jobs (provider_type, priority DESC, created_at)
    WHERE state = 'PENDING' AND admitted_at IS NULL;
-- Slots in use: admitted jobs still running, and workers not yet terminated.
CREATE INDEX idx_jobs_admitted ON jobs (provider_type)
    WHERE admitted_at IS NOT NULL AND state IN ('PENDING', 'ASSIGNED', 'RUNNING');
CREATE INDEX idx_workers_live_by_provider ON workers (provider_type) WHERE state <> 'TERMINATED';
