"""Rebuilding the read models from ``domain_events``.

``verify`` projects the whole log into a scratch schema and compares it with the live
tables, all in one REPEATABLE READ transaction (one snapshot, so live writers cannot
cause false differences). ``apply`` rebuilds while the platform runs: it projects the
log into a scratch schema, a page per transaction, catches up with what was written
meanwhile, then takes the event-log lock (writers wait), projects the last few events
and swaps the scratch tables in. Writers wait only for that swap, which it measures.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import args_row
from psycopg_pool import ConnectionPool

from hodei.store import projections
from hodei.store.db import translate_errors
from hodei.store.events import EventRecord
from hodei.store.sql import query

T = TypeVar("T")
SCRATCH_SCHEMA = "hodei_replay"
REBUILD_SCHEMA = "hodei_rebuild"
RETIRED_SCHEMA = "hodei_retired"
# Rows of the log a page reads (a row of a saga's moves holds several events).
PAGE = 2000
# Catching up stops (and the lock is taken) once a round finds fewer rows than this.
CATCH_UP_LEFT = 200
CATCH_UP_ROUNDS = 20
# Pages ``apply`` projects in one transaction (each transaction waits for its results).
PAGES_PER_TRANSACTION = 5
_JOINS_BY_INDEX = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")
# The swap's tries, and how long each waits for a lock (under PostgreSQL's default 1 s
# deadlock_timeout, so in a cycle with writers it is the swap that gives way).
SWAP_TRIES = 20
SWAP_LOCK_TIMEOUT = "500ms"
# Keys no projection statement finds a row by (an audit row is only ever inserted; a step
# is found by its saga and place): replay's copies get them once the bulk of the log is
# in, built at once, where kept up to date row by row they cost PostgreSQL a random
# insert into a growing index for every audit row and planned step (100,000 events:
# PostgreSQL's CPU for --apply 4.7-5.1 -> 4.0-4.4 s).
_NOT_LOOKED_UP = frozenset({"saga_audit_events_pkey", "saga_steps_pkey"})


@dataclass(frozen=True)
class Difference:
    table: str
    only_live: list[tuple[Any, ...]]
    only_replayed: list[tuple[Any, ...]]


@dataclass(frozen=True)
class _Page:
    statements: projections.Page
    last: int  # the position of its last event


def _pages(
    conn: psycopg.Connection[Any], after: int, last_page: Callable[[int], bool] = lambda found: not found
) -> Iterator[_Page]:
    """The log's pages after position ``after``, each with its statements built, until
    ``last_page(rows found)`` says the page just read was the last."""
    with conn.cursor(row_factory=args_row(EventRecord)) as reader:
        while True:
            records = reader.execute(query("select_event_records"), (after, PAGE)).fetchall()
            if records:
                after = records[-1].position
                yield _Page(projections.Page(records), after)
            if last_page(len(records)):
                return


def _read_ahead(pages: Iterator[_Page]) -> Iterator[_Page]:
    """``pages``, each read and built on a thread of its own while the caller sends the
    one before: the client's work on a page and the database's overlap."""
    with ThreadPoolExecutor(1, thread_name_prefix="hodei-replay-reader") as reader:
        upcoming = reader.submit(next, pages, None)
        while (page := upcoming.result()) is not None:
            upcoming = reader.submit(next, pages, None)
            yield page


@contextlib.contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Replay makes a page's rows, events and statements by the hundred thousand, none of
    them in a cycle: reference counting frees each page once sent. The cyclic collector
    would scan them again and again while they outlive its young generations: a fifth of
    replay's client CPU (the bench's log of 163,000 events: 8.5 -> 6.8 s; the same peak
    memory, 126 objects in cycles at the end). Paused for the replay and restored after,
    for the whole process (the replay command's own)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _index_plans(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Projection statements planned as index lookups, row by row. A plan is kept for the
    whole replay while the scratch tables grow from nothing: a plan made for an empty
    table would scan (and hash) the whole table at every statement once it is full."""
    for setting in _JOINS_BY_INDEX:
        conn.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
    yield
    for setting in _JOINS_BY_INDEX:
        conn.execute(sql.SQL("SET LOCAL {} TO DEFAULT").format(sql.Identifier(setting)))


def _send(conn: psycopg.Connection[Any], pages: Iterable[_Page], after: int) -> tuple[int, int]:
    """Every page into the tables on the search_path, in this transaction, pipelined: no
    round trip waits between pages; (events, last position)."""
    count = 0
    with _index_plans(conn), conn.cursor() as writer, conn.pipeline():
        for page in pages:
            page.statements.send(writer)
            count, after = count + page.statements.events, page.last
    return count, after


def _create_scratch(conn: psycopg.Connection[Any]) -> None:
    """Unlogged copies of the read models (the verify rolls them back) with the keys the
    projections find rows by only: each projected update finds its row by key, so a
    verify is linear in the log; other indexes would only be kept up to date row by row
    for nothing (a duplicate row still shows, as a difference)."""
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
    _add_constraints(conn, SCRATCH_SCHEMA, _looked_up(_constraints(conn)), "pu")


def _looked_up(constraints: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """The ``constraints`` but the keys no projection finds a row by (``_NOT_LOOKED_UP``)."""
    return [constraint for constraint in constraints if constraint[1] not in _NOT_LOOKED_UP]


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
    with _without_cycle_collection(), translate_errors(), pool.connection() as conn, pool.connection() as log:
        conn.autocommit = False
        log.autocommit = False
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _create_scratch(conn)
            conn.execute(sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(SCRATCH_SCHEMA)))
            # The log is read on a second connection, in this transaction's snapshot.
            log.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            [(snapshot,)] = conn.execute(query("export_snapshot")).fetchall()
            log.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            count, _ = _send(conn, _read_ahead(_pages(log, 0)), 0)
            differences = [d for table in projections.READ_MODELS if (d := _compare(conn, table, sample))]
        finally:
            log.rollback()
            log.autocommit = True
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
    # Why the retired read models were not dropped ("" when they were).
    left: str = ""


def _schema_sql(statement: str, *names: str) -> sql.Composed:
    return sql.SQL(statement).format(*(sql.Identifier(name) for name in names))


def _create_rebuild_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, str]]:
    """Empty copies of the read models in REBUILD_SCHEMA with the live tables' own
    constraint names, so nothing changes name when they are swapped in; the live
    constraints, for ``_finish_rebuild_tables``. The copies start with the keys the
    projections find rows by only (``_looked_up``): the bulk of the log goes in without a
    foreign-key check per row or another index kept up to date row by row. They are
    logged from the start: an unlogged copy made logged once the bulk was in (``SET
    LOGGED``, a rewrite of each table and its indexes into the WAL, with the client idle)
    cost more than the WAL record of each row version written while the client builds the
    next page (100,000 events: --apply 5.9 -> 5.0 s, PostgreSQL's CPU 5.0-5.4 -> 4.4-4.5 s)."""
    conn.execute(_schema_sql("DROP SCHEMA IF EXISTS {} CASCADE", REBUILD_SCHEMA))
    conn.execute(_schema_sql("DROP SCHEMA IF EXISTS {} CASCADE", RETIRED_SCHEMA))
    conn.execute(_schema_sql("CREATE SCHEMA {}", REBUILD_SCHEMA))
    constraints = _constraints(conn)
    for table in projections.READ_MODELS:
        conn.execute(
            _schema_sql(
                "CREATE TABLE {}.{} (LIKE public.{} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)",
                REBUILD_SCHEMA,
                table,
                table,
            )
        )
    _add_constraints(conn, REBUILD_SCHEMA, _looked_up(constraints), "pu")
    return constraints


def _finish_rebuild_tables(conn: psycopg.Connection[Any], constraints: list[tuple[str, str, str, str]]) -> None:
    """Once the bulk of the log is in: the copies get their other keys and indexes (each
    built at once) and their foreign keys (checked at once), before the last events go in
    and they are swapped in."""
    later = [constraint for constraint in constraints if constraint[1] in _NOT_LOOKED_UP]
    _add_constraints(conn, REBUILD_SCHEMA, later, "pu")
    _add_plain_indexes(conn, REBUILD_SCHEMA)
    # An unqualified table (a foreign key's target) is the rebuilt one.
    conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(REBUILD_SCHEMA)))
    _add_constraints(conn, REBUILD_SCHEMA, constraints, "f")


def _swap(conn: psycopg.Connection[Any]) -> None:
    """The rebuilt tables in public, the live ones retired, with the live ones' extended
    statistics made again on the rebuilt ones (they would go with the retired tables:
    admission's plans lean on them, sql/021 and sql/024). ANALYZE (autovacuum's, after so
    many rows written) fills them."""
    statistics = conn.execute(query("read_model_statistics"), (list(projections.READ_MODELS),)).fetchall()
    conn.execute(_schema_sql("CREATE SCHEMA {}", RETIRED_SCHEMA))
    for table in projections.READ_MODELS:
        conn.execute(_schema_sql("ALTER TABLE public.{} SET SCHEMA {}", table, RETIRED_SCHEMA))
        conn.execute(_schema_sql("ALTER TABLE {}.{} SET SCHEMA public", REBUILD_SCHEMA, table))
    for name, table, columns in statistics:
        conn.execute(sql.SQL("DROP STATISTICS public.{}").format(sql.Identifier(name)))
        made = sql.SQL("CREATE STATISTICS public.{} ON {} FROM public.{}")
        conn.execute(made.format(sql.Identifier(name), sql.SQL(columns), sql.Identifier(table)))


class _CatchUp:
    """When ``apply`` stops reading while writers run: after a page far from full, or
    after many short pages (writers as fast as the rebuild); the rest comes under the lock."""

    def __init__(self) -> None:
        self.rounds = 0

    def __call__(self, found: int) -> bool:
        if found == PAGE:
            return False
        self.rounds += 1
        return found < CATCH_UP_LEFT or self.rounds >= CATCH_UP_ROUNDS


def _under_short_locks(conn: psycopg.Connection[Any], work: Callable[[], T]) -> T:
    """``work`` in a transaction whose locks wait at most SWAP_LOCK_TIMEOUT, tried again
    (SWAP_TRIES in all) when it gave up or PostgreSQL broke a deadlock with it: beside
    writers, the rebuild is the one that gives way."""
    attempt = 0
    while True:
        attempt += 1
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SWAP_LOCK_TIMEOUT)))
                return work()
        except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected):
            if attempt == SWAP_TRIES:
                raise
            time.sleep(0.05 * attempt)


def _swap_in(conn: psycopg.Connection[Any], scratch: sql.Composed, last: int) -> tuple[int, float]:
    """Under the writers' locks, the events after ``last`` and the swap; (events, seconds
    the locks were held). Locks are taken in the writers' order, read models first and the
    event log last, so a writer between the two is waited for, never deadlocked with. A
    writer holding one read model while waiting for another that the rebuild holds can
    still close a cycle: the rebuild gives up first and tries again (``_under_short_locks``)."""
    live = sql.SQL(", ").join(sql.SQL("public.{}").format(sql.Identifier(table)) for table in projections.READ_MODELS)

    def swap() -> tuple[int, float]:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(live))
        locked = time.perf_counter()
        conn.execute(query("lock_domain_events"))
        conn.execute(scratch)
        under_lock, _ = _send(conn, _pages(conn, last), last)
        _swap(conn)
        return under_lock, locked

    under_lock, locked = _under_short_locks(conn, swap)
    return under_lock, time.perf_counter() - locked


def _drop_scratch(conn: psycopg.Connection[Any]) -> str:
    """Drops the retired read models and the emptied rebuild schema; "" once done, else why
    they were left. A writer that queued on a read model during the swap may hold the
    retired table for a moment, and a DROP waiting for it deadlocked with that writer (the
    rebuild, done by then, failed). The next ``apply`` drops what is left before it starts."""

    def drop() -> None:
        conn.execute(_schema_sql("DROP SCHEMA {} CASCADE", RETIRED_SCHEMA))
        conn.execute(_schema_sql("DROP SCHEMA {} CASCADE", REBUILD_SCHEMA))

    try:
        _under_short_locks(conn, drop)
    except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as exc:
        return (
            f"the retired read models (schema {RETIRED_SCHEMA}) are still in a writer's use "
            f"({exc.diag.message_primary}): the next replay --apply drops them, "
            f"or DROP SCHEMA {RETIRED_SCHEMA}, {REBUILD_SCHEMA} CASCADE"
        )
    return ""


def apply(pool: ConnectionPool) -> Rebuild:
    """Rebuilds every read model from the log while the platform keeps writing."""
    with _without_cycle_collection(), translate_errors(), pool.connection() as conn:
        conn.autocommit = False
        try:
            with conn.transaction():
                constraints = _create_rebuild_tables(conn)
            events, last, catch_up = 0, 0, _CatchUp()
            scratch = sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(REBUILD_SCHEMA))
            with pool.connection() as log:
                pages = _read_ahead(_pages(log, last, catch_up))
                for page in pages:
                    with conn.transaction():  # a few pages per transaction: nothing held long
                        conn.execute(scratch)
                        more = itertools.islice(pages, PAGES_PER_TRANSACTION - 1)
                        found, last = _send(conn, itertools.chain([page], more), last)
                    events += found
            with conn.transaction():
                _finish_rebuild_tables(conn, constraints)
            under_lock, locked_seconds = _swap_in(conn, scratch, last)
            left = _drop_scratch(conn)
        finally:
            conn.rollback()
            conn.autocommit = True
    return Rebuild(events + under_lock, under_lock, catch_up.rounds, locked_seconds, left)
