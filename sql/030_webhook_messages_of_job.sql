-- `job describe`: the webhook messages about one job (hodei.webhooks.Webhooks.messages).
CREATE INDEX idx_webhook_deliveries_job ON hodei.webhook_deliveries (job_id) WHERE job_id IS NOT NULL;
