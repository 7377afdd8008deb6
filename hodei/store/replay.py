"""Rebuilding the read models from ``domain_events``.

``verify`` projects the whole log into a scratch schema and compares it with the live
tables, all in one REPEATABLE READ transaction (one snapshot, so live writers cannot
cause false differences). ``apply`` rebuilds while the platform runs: it projects the
log into a scratch schema, a page per transaction, catches up with what was written
meanwhile, then takes the event-log lock (writers wait), projects the last few events
and swaps the scratch tables in. Writers wait only for that swap, which it measures.
"""

from __future__ import annotations

import time
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
REBUILD_SCHEMA = "hodei_rebuild"
RETIRED_SCHEMA = "hodei_retired"
PAGE = 2000
# Catching up stops (and the lock is taken) once a round finds fewer events than this.
CATCH_UP_LEFT = 200
CATCH_UP_ROUNDS = 20


@dataclass(frozen=True)
class Difference:
    table: str
    only_live: list[tuple[Any, ...]]
    only_replayed: list[tuple[Any, ...]]


def _project_page(conn: psycopg.Connection[Any], after: int) -> tuple[int, int]:
    """Projects the events after position ``after``, one page, pipelined (one round trip
    per page instead of one per statement); (events, last position)."""
    with conn.cursor(row_factory=tuple_row) as reader, conn.cursor() as writer:
        records = [EventRecord(*row) for row in reader.execute(query("select_event_records"), (after, PAGE))]
        projections.project_page(writer, records)
    return len(records), records[-1].position if records else after


def _project_all(conn: psycopg.Connection[Any], after: int = 0) -> tuple[int, int]:
    """Every event after ``after``, in this transaction; (events, last position)."""
    count = 0
    while True:
        found, after = _project_page(conn, after)
        if not found:
            return count, after
        count += found


def _create_scratch(conn: psycopg.Connection[Any]) -> None:
    """Unlogged copies of the read models (the verify rolls them back) with their keys
    only: each projected update finds its row by key, so a verify is linear in the log;
    the other indexes would only be kept up to date row by row for nothing."""
    conn.execute(_schema_sql("DROP SCHEMA IF EXISTS {} CASCADE", SCRATCH_SCHEMA))
    conn.execute(_schema_sql("CREATE SCHEMA {}", SCRATCH_SCHEMA))
    for table in projections.READ_MODELS:
        conn.execute(
            _schema_sql(
                "CREATE UNLOGGED TABLE {}.{} (LIKE public.{} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
                SCRATCH_SCHEMA,
                table,
                table,
            )
        )
    _add_constraints(conn, SCRATCH_SCHEMA, _constraints(conn), "pu")


def _constraints(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, str]]:
    """The live read models' keys and foreign keys: (table, name, definition, kind). Read
    before the search_path changes, so a foreign key names its table unqualified."""
    return conn.execute(query("read_model_constraints"), (list(projections.READ_MODELS),)).fetchall()


def _add_constraints(
    conn: psycopg.Connection[Any], schema: str, constraints: list[tuple[str, str, str, str]], kinds: str
) -> None:
    """The ``constraints`` of ``kinds`` (p: primary keys, u: unique, f: foreign keys,
    added in that order), under their own names, to the copies in ``schema``."""
    for kind in kinds:
        for table, name, definition, contype in constraints:
            if contype == kind:
                conn.execute(
                    _schema_sql("ALTER TABLE {}.{} ADD CONSTRAINT {} ", schema, table, name) + sql.SQL(definition)
                )


def _add_plain_indexes(conn: psycopg.Connection[Any], schema: str) -> None:
    """The live read models' other indexes, under their own names, on the copies in ``schema``."""
    for (definition,) in conn.execute(query("read_model_plain_indexes"), (list(projections.READ_MODELS),)).fetchall():
        conn.execute(sql.SQL(definition.replace(" ON public.", f" ON {schema}.", 1)))


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
            count, _ = _project_all(conn)
            differences = [d for table in projections.READ_MODELS if (d := _compare(conn, table, sample))]
        finally:
            conn.rollback()
            conn.autocommit = True
    return count, differences


@dataclass(frozen=True)
class Rebuild:
    """What ``apply`` did: events projected while writers ran, events projected under
    the lock, and how long the lock was held (the longest any writer waited for it)."""

    events: int
    under_lock: int
    rounds: int
    locked_seconds: float


def _schema_sql(statement: str, *names: str) -> sql.Composed:
    return sql.SQL(statement).format(*(sql.Identifier(name) for name in names))


def _create_rebuild_tables(conn: psycopg.Connection[Any]) -> None:
    """Empty copies of the read models in REBUILD_SCHEMA with the live tables' own
    constraint names, so nothing changes name when they are swapped in. Their plain
    indexes come once the bulk of the log is in (``_add_plain_indexes``): built at once,
    not row by row."""
    conn.execute(_schema_sql("DROP SCHEMA IF EXISTS {} CASCADE", REBUILD_SCHEMA))
    conn.execute(_schema_sql("DROP SCHEMA IF EXISTS {} CASCADE", RETIRED_SCHEMA))
    conn.execute(_schema_sql("CREATE SCHEMA {}", REBUILD_SCHEMA))
    constraints = _constraints(conn)
    # From here, an unqualified table (a foreign key's target) is the rebuilt one.
    conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(REBUILD_SCHEMA)))
    for table in projections.READ_MODELS:
        conn.execute(
            _schema_sql(
                "CREATE TABLE {}.{} (LIKE public.{} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)",
                REBUILD_SCHEMA,
                table,
                table,
            )
        )
    _add_constraints(conn, REBUILD_SCHEMA, constraints, "puf")


def _swap(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_schema_sql("CREATE SCHEMA {}", RETIRED_SCHEMA))
    for table in projections.READ_MODELS:
        conn.execute(_schema_sql("ALTER TABLE public.{} SET SCHEMA {}", table, RETIRED_SCHEMA))
        conn.execute(_schema_sql("ALTER TABLE {}.{} SET SCHEMA public", REBUILD_SCHEMA, table))


def apply(pool: ConnectionPool) -> Rebuild:
    """Rebuilds every read model from the log while the platform keeps writing."""
    with translate_errors(), pool.connection() as conn:
        conn.autocommit = False
        try:
            with conn.transaction():
                _create_rebuild_tables(conn)
            events, last, rounds = 0, 0, 0
            scratch = sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(REBUILD_SCHEMA))
            while True:  # a page per transaction: nothing held long
                with conn.transaction():
                    conn.execute(scratch)
                    found, last = _project_page(conn, last)
                events += found
                if found < PAGE:
                    rounds += 1
                    if found < CATCH_UP_LEFT or rounds >= CATCH_UP_ROUNDS:
                        break
            with conn.transaction():
                _add_plain_indexes(conn, REBUILD_SCHEMA)
            with conn.transaction():
                conn.execute(query("lock_domain_events"))
                locked = time.perf_counter()
                conn.execute(scratch)
                under_lock, last = _project_all(conn, last)
                _swap(conn)
            locked_seconds = time.perf_counter() - locked
            with conn.transaction():
                conn.execute(_schema_sql("DROP SCHEMA {} CASCADE", RETIRED_SCHEMA))
                conn.execute(_schema_sql("DROP SCHEMA {} CASCADE", REBUILD_SCHEMA))
        finally:
            conn.rollback()
            conn.autocommit = True
    return Rebuild(events + under_lock, under_lock, rounds, locked_seconds)
