-- A sweep asks the latest version of every cron job not deleted (hodei.cron.CronJobs): the
-- latest event's type says whether it was, so it is kept in the index beside the version.
-- With the version alone every deleted cron job was loaded and kept by each server for its
-- life, and looked at each second: a cost growing with every name that ever came and went.
DROP INDEX idx_domain_events_cron_jobs;
CREATE INDEX idx_domain_events_cron_jobs ON domain_events (aggregate_id, aggregate_version DESC)
    INCLUDE (event_type) WHERE aggregate_type = 'CronJob';
