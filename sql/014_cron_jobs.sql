-- Cron jobs (hodei.domain.cron) have no read model: their events are few (a definition and
-- its switches) and are read from the log itself. Each sweep asks every cron job's latest
-- version through this index, and loads again only the ones that changed.
CREATE INDEX idx_domain_events_cron_jobs ON domain_events (aggregate_id, aggregate_version)
    WHERE aggregate_type = 'CronJob';

-- The jobs a cron job started (the label hodei.io/cron): its newest for `cron list`, the
-- ones not ended for a schedule that forbids overlapping runs.
CREATE INDEX idx_jobs_cron ON jobs ((spec -> 'labels' ->> 'hodei.io/cron'), created_at)
    WHERE spec -> 'labels' ? 'hodei.io/cron';
