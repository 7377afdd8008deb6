-- Writers take their turns on the event log through an advisory lock, no longer a table
-- lock. `LOCK TABLE domain_events IN EXCLUSIVE MODE`, held by one writer after another,
-- locked autovacuum out of the log while writes went on (VACUUM and ANALYZE need SHARE
-- UPDATE EXCLUSIVE, which every mode a writer could serialise on conflicts with): in four
-- back-to-back bursts of 200 jobs PostgreSQL logged "skipping vacuum of domain_events ---
-- lock not available" at each visit and never analyzed it, so the plans each connection
-- made while the log was small kept reading all of it (3,586 sequential scans, 18.8M rows
-- read, over 800 jobs); and a vacuum against wraparound, which does not skip a locked
-- table, would have queued every writer behind it while it read the whole log. The lock
-- is the transaction's: taken before the append (queries.sql: lock_domain_events) and
-- released at its commit, so positions still follow commit order.
CREATE FUNCTION hodei.take_event_log_turn() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(6, 0)
$$;

-- Any other writer of the log (a tool's INSERT, a COPY) takes its turn as it writes.
CREATE FUNCTION hodei.event_log_turn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hodei.take_event_log_turn();
    RETURN NULL;
END;
$$;
CREATE TRIGGER domain_events_writers_take_turns BEFORE INSERT ON domain_events
    FOR EACH STATEMENT EXECUTE FUNCTION hodei.event_log_turn();
