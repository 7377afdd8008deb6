-- The platform's configuration changes (`audit`: providers, pools, submitter limits, webhooks,
-- cron jobs), newest first, read off the log without reading the jobs' events between them.
CREATE INDEX idx_domain_events_configuration ON domain_events (position)
    WHERE aggregate_type IN ('Provider', 'Pool', 'SubmitterLimit', 'Webhook', 'CronJob');
