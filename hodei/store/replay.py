"""Rebuilding the read models from ``domain_events``.

``verify`` projects the whole log into a scratch schema and compares it with the live
tables, all in one REPEATABLE READ transaction (one snapshot, so live writers cannot
cause false differences). ``apply`` rebuilds the live tables in place while holding
the event-log lock, so no writer interleaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from hodei.store import projections
from hodei.store.db import translate_errors
from hodei.store.events import EventRecord
from hodei.store.sql import query

SCRATCH_SCHEMA = "hodei_replay"
PAGE = 2000


@dataclass(frozen=True)
class Difference:
    table: str
    only_live: list[tuple[Any, ...]]
    only_replayed: list[tuple[Any, ...]]


def _project_all(conn: psycopg.Connection[Any]) -> int:
    """Runs every projection over the log, a page at a time, pipelined (one round trip
    per page instead of one per statement)."""
    count = 0
    last = 0
    with conn.cursor(row_factory=tuple_row) as reader, conn.cursor() as writer:
        while True:
            rows = reader.execute(query("select_event_records"), (last, PAGE)).fetchall()
            if not rows:
                return count
            with conn.pipeline():
                for row in rows:
                    record = EventRecord(*row)
                    projections.project(writer, record)
                    last = record.position
            count += len(rows)


def _create_scratch(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCRATCH_SCHEMA)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCRATCH_SCHEMA)))
    for table in projections.READ_MODELS:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (LIKE public.{} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                sql.Identifier(SCRATCH_SCHEMA), sql.Identifier(table), sql.Identifier(table)
            )
        )


def _compare(conn: psycopg.Connection[Any], table: str, sample: int) -> Difference | None:
    live = sql.SQL("public.{}").format(sql.Identifier(table))
    replayed = sql.SQL("{}.{}").format(sql.Identifier(SCRATCH_SCHEMA), sql.Identifier(table))
    only = sql.SQL("SELECT * FROM {} EXCEPT ALL SELECT * FROM {} LIMIT {}")
    only_live = conn.execute(only.format(live, replayed, sql.Literal(sample))).fetchall()
    only_replayed = conn.execute(only.format(replayed, live, sql.Literal(sample))).fetchall()
    if only_live or only_replayed:
        return Difference(table, only_live, only_replayed)
    return None


def verify(pool: ConnectionPool, sample: int = 5) -> tuple[int, list[Difference]]:
    """(events replayed, differences per table). Leaves the live tables untouched."""
    with translate_errors(), pool.connection() as conn:
        conn.autocommit = False
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _create_scratch(conn)
            conn.execute(sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(SCRATCH_SCHEMA)))
            count = _project_all(conn)
            differences = [d for table in projections.READ_MODELS if (d := _compare(conn, table, sample))]
        finally:
            conn.rollback()
            conn.autocommit = True
    return count, differences


def apply(pool: ConnectionPool) -> int:
    """Rebuilds every read model in place; returns the number of events replayed."""
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in projections.READ_MODELS)
    with translate_errors(), pool.connection() as conn, conn.transaction():
        conn.execute(query("lock_domain_events"))
        conn.execute(sql.SQL("TRUNCATE {}").format(tables))
        return _project_all(conn)
