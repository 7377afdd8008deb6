-- The sim provider (a simulated fleet for load tests) has a provider_configs row too.
ALTER TABLE provider_configs DROP CONSTRAINT provider_configs_provider_type_check;
ALTER TABLE provider_configs ADD CONSTRAINT provider_configs_provider_type_check
    CHECK (provider_type IN ('docker', 'kubernetes', 'local', 'sim'));
