-- The elements of a jsonb array, for the projection statements that find their rows by key.
-- jsonb_to_recordset is planned as 100 rows: with a read model of a few thousand rows the
-- plan (kept per connection) scans and hashes the whole table at every event. Planned as
-- a few rows, the lookups go through the primary key. PL/pgSQL, so that the planner keeps
-- the ROWS estimate (a SQL function would be inlined).
CREATE FUNCTION hodei.rows(items jsonb) RETURNS SETOF jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE ROWS 4 AS $$
BEGIN
    RETURN QUERY SELECT jsonb_array_elements(items);
END
$$;
