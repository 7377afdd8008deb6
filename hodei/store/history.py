"""One job's rows rebuilt from its own events: its history, and a replay of one job.

The job's events are projected into temporary tables (private to the transaction,
dropped at its end) by the same projections the recorder runs, so the row shown for
any moment is the row the live table held then, and concurrent requests never meet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool

from hodei.errors import NotFound
from hodei.store import projections
from hodei.store.db import translate_errors
from hodei.store.events import EventRecord
from hodei.store.readmodels import JobRow
from hodei.store.replay import Difference
from hodei.store.sql import query

# A job's rows in each read model it has any in ({schema} is public or pg_temp).
_JOB_ROWS = {
    "jobs": "id = %(job)s",
    "job_log_files": "job_id = %(job)s",
    "workers": "job_id = %(job)s",
    "sagas": "correlation_id = %(job)s::text",
    "saga_steps": "saga_id IN (SELECT id FROM {schema}.sagas WHERE correlation_id = %(job)s::text)",
    "saga_audit_events": "saga_id IN (SELECT id FROM {schema}.sagas WHERE correlation_id = %(job)s::text)",
}


@dataclass(frozen=True)
class HistoryEntry:
    """The job's row right after one of its events."""

    event: EventRecord
    job: JobRow


def _records(conn: psycopg.Connection[Any], job_id: UUID, name: str) -> list[EventRecord]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return [EventRecord(*row) for row in cur.execute(query(name), {"job_id": str(job_id)}).fetchall()]


def _temporary_read_models(conn: psycopg.Connection[Any]) -> None:
    """Empty copies of the read models that shadow them (pg_temp is searched first)."""
    for table in projections.READ_MODELS:
        conn.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} (LIKE public.{} INCLUDING ALL) ON COMMIT DROP").format(
                sql.Identifier(table), sql.Identifier(table)
            )
        )


@contextlib.contextmanager
def _scratch(pool: ConnectionPool, repeatable_read: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A transaction with empty read models of its own, rolled back at the end; with
    ``repeatable_read``, one snapshot, so live writers cannot cause false differences."""
    with translate_errors(), pool.connection() as conn:
        conn.autocommit = False
        try:
            if repeatable_read:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _temporary_read_models(conn)
            yield conn
        finally:
            conn.rollback()
            conn.autocommit = True


def history(pool: ConnectionPool, job_id: UUID) -> list[HistoryEntry]:
    """The job's row after each of its events, oldest first."""
    entries = []
    with _scratch(pool) as conn, conn.cursor() as writer, conn.cursor(row_factory=dict_row) as reader:
        for record in _records(conn, job_id, "events_of_job_aggregate"):
            projections.project(writer, record)
            row = reader.execute(query("get_job"), (job_id,)).fetchone()
            assert row is not None, f"no job row after {record.event_type}"
            entries.append(HistoryEntry(record, JobRow(**row)))
    return entries


def job_at(pool: ConnectionPool, job_id: UUID, version: int) -> HistoryEntry:
    """The job's row right after its event of ``version`` (``history``'s entry for it):
    its events up to that one projected, the row read once."""
    with _scratch(pool) as conn, conn.cursor() as writer, conn.cursor(row_factory=dict_row) as reader:
        upto = [
            record
            for record in _records(conn, job_id, "events_of_job_aggregate")
            if record.aggregate_version <= version
        ]
        for record in upto:
            projections.project(writer, record)
        row = reader.execute(query("get_job"), (job_id,)).fetchone()
    if not upto or upto[-1].aggregate_version != version or row is None:
        raise NotFound(f"job {job_id} has no version {version}")
    return HistoryEntry(upto[-1], JobRow(**row))


def _job_rows(schema: str, table: str) -> sql.Composable:
    where = sql.SQL(_JOB_ROWS[table].format(schema=schema))
    return sql.SQL("SELECT * FROM {}.{} WHERE ").format(sql.Identifier(schema), sql.Identifier(table)) + where


def _differences(conn: psycopg.Connection[Any], job_id: UUID, sample: int) -> list[Difference]:
    found = []
    params = {"job": job_id}
    for table in _JOB_ROWS:
        live, rebuilt = _job_rows("public", table), _job_rows("pg_temp", table)
        limit = sql.SQL(" LIMIT {}").format(sql.Literal(sample))
        only_live = conn.execute(live + sql.SQL(" EXCEPT ALL ") + rebuilt + limit, params).fetchall()
        only_rebuilt = conn.execute(rebuilt + sql.SQL(" EXCEPT ALL ") + live + limit, params).fetchall()
        if only_live or only_rebuilt:
            found.append(Difference(table, only_live, only_rebuilt))
    return found


def _project_job(conn: psycopg.Connection[Any], job_id: UUID) -> int:
    records = _records(conn, job_id, "events_of_job")
    with conn.cursor() as writer, conn.pipeline():
        return projections.project_all(writer, records)


def verify_job(pool: ConnectionPool, job_id: UUID, sample: int = 5) -> tuple[int, list[Difference]]:
    """(the job's events replayed, differences per table) for the rows of one job."""
    with _scratch(pool, repeatable_read=True) as conn:
        count = _project_job(conn, job_id)
        return count, _differences(conn, job_id, sample)


def apply_job(pool: ConnectionPool, job_id: UUID) -> int:
    """Rebuilds one job's rows in the live tables; writers of the log wait meanwhile."""
    with translate_errors(), pool.connection() as conn, conn.transaction():
        conn.execute(query("lock_domain_events"))
        _temporary_read_models(conn)
        count = _project_job(conn, job_id)
        params = {"job": job_id}
        # Children first (they name the sagas they belong to), parents after.
        for table in reversed(list(_JOB_ROWS)):
            where = sql.SQL(_JOB_ROWS[table].format(schema="public"))
            conn.execute(sql.SQL("DELETE FROM public.{} WHERE ").format(sql.Identifier(table)) + where, params)
        for table in _JOB_ROWS:
            conn.execute(
                sql.SQL("INSERT INTO public.{} ").format(sql.Identifier(table)) + _job_rows("pg_temp", table),
                params,
            )
        return count
