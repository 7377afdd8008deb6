"""Connections to PostgreSQL, and the one place where driver errors become Hodei errors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import kwargs_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from hodei.errors import ConcurrencyConflict, StoreUnavailable
from hodei.store.sql import query

T = TypeVar("T")

# Every jsonb value read or written (event payloads, job specs, saga contexts) goes
# through orjson: a third of a replay's client time was the standard library's json.
set_json_dumps(orjson.dumps)
set_json_loads(orjson.loads)

# Unique constraints whose violation means "someone else wrote this first".
# A duplicate aggregate version; or a read-model row created twice (the projections run
# before the events are appended, so they may meet the duplicate first): keyed by an
# aggregate's or an event's id, such a row is only ever created twice by two writers of
# the same aggregate version.
_CONFLICT_CONSTRAINTS = {
    "domain_events_aggregate_version_key",
    "domain_events_pkey",
    "jobs_pkey",
    "job_log_files_pkey",
    "job_log_files_job_id_key",
    "workers_pkey",
    "sagas_pkey",
    "saga_steps_pkey",
    "saga_steps_order_key",
    "saga_audit_events_pkey",
    "provider_configs_pkey",
    "provider_configs_name_key",
    "provider_configs_provider_type_key",
}


def _configure(conn: psycopg.Connection[object]) -> None:
    # Reads run outside transactions; writers open one explicitly.
    conn.autocommit = True
    # A writer waiting on the event-log lock longer than this gives up (and is retried):
    # a stuck transaction must not stall every writer.
    conn.execute("SET lock_timeout = '10s'")


def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 20,
    name: str = "hodei",
    settings: Mapping[str, str] | None = None,
) -> ConnectionPool:
    """Opens a pool and waits until one connection works, so a wrong URL fails here.
    ``settings``: PostgreSQL settings of every connection of the pool."""
    kwargs: dict[str, object] = {"application_name": name, "prepare_threshold": 0}
    if settings:
        kwargs["options"] = " ".join(f"-c {key}={value}" for key, value in settings.items())
    pool: ConnectionPool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        configure=_configure,
        open=False,
        # prepare_threshold 0: statements are prepared on first use, planned once per connection.
        kwargs=kwargs,
    )
    try:
        with translate_errors():
            pool.open(wait=True, timeout=15)
    except Exception:
        pool.close()
        raise
    return pool


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turns psycopg errors into Hodei errors, chained, keeping others as they are."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        constraint = exc.diag.constraint_name or ""
        if constraint in _CONFLICT_CONSTRAINTS:
            raise ConcurrencyConflict(f"concurrent write refused by {constraint}: {exc.diag.message_detail}") from exc
        raise
    except pg_errors.DeadlockDetected:
        raise  # PostgreSQL answered: not an outage (writers run the transaction again)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
    except TimeoutError as exc:
        # psycopg_pool.PoolTimeout subclasses OperationalError; plain timeouts come from pool.open.
        raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc


def fetch_all(pool: ConnectionPool, name: str, params: Any, row: Callable[..., T]) -> list[T]:
    """Runs the named query and returns its rows as ``row(**columns)``: a dataclass whose
    fields are the query's columns, in any order, or a function taking them by name."""
    with translate_errors(), pool.connection() as conn, conn.cursor(row_factory=kwargs_row(row)) as cur:
        return cur.execute(query(name), params).fetchall()


def fetch_one(pool: ConnectionPool, name: str, params: Any, row: Callable[..., T]) -> T | None:
    found = fetch_all(pool, name, params, row)
    return found[0] if found else None


def fetch_column(pool: ConnectionPool, name: str, params: Any = None) -> list[Any]:
    """The first column of every row."""
    with translate_errors(), pool.connection() as conn:
        return [found[0] for found in conn.execute(query(name), params).fetchall()]


def fetch_value(pool: ConnectionPool, name: str, params: Any = None) -> Any:
    """The first column of the first row (None without rows)."""
    with translate_errors(), pool.connection() as conn:
        found = conn.execute(query(name), params).fetchone()
    return None if found is None else found[0]


def execute(pool: ConnectionPool, name: str, params: Any = None) -> int:
    """Runs the named statement; returns the number of rows it touched."""
    with translate_errors(), pool.connection() as conn:
        return conn.execute(query(name), params).rowcount
