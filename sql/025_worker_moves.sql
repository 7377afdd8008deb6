-- A worker's events of one transaction that want no delivery (its registration and its job's
-- dispatch, which the registration's commit does itself) are one domain_events row of type
-- WorkerMoved, as a saga's moves are one row of type SagaMoved (hodei.store.events.pack): the
-- events in order in payload->'events', the row with the first one's version. A version
-- older than this migration cannot read such a row, and refuses a database that has it.
COMMENT ON COLUMN domain_events.event_type IS
    'The event''s type; SagaMoved and WorkerMoved rows hold several events of their aggregate, in payload->''events'' (hodei.store.events.pack)';
