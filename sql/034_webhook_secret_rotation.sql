-- `webhook rotate`: a webhook's log may now hold WebhookSecretRotated, which a version before
-- this one cannot replay. The index that reads a webhook's latest event covers it already (it
-- holds every event of a Webhook); this migration marks the database as this version's, so an
-- older server, relay or `replay` refuses it by name ("migrated by a newer hodei") instead of
-- failing on the event.
COMMENT ON INDEX idx_domain_events_webhooks IS
    'Each webhook''s events newest first (WebhookSet, WebhookChanged, WebhookSecretRotated, WebhookDeleted): hodei.webhooks reads the latest';
