"""Connections to PostgreSQL, and the one place where driver errors become Hodei errors."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import kwargs_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from hodei.errors import ConcurrencyConflict, StoreUnavailable
from hodei.store.sql import query

T = TypeVar("T")

# The transaction of the command try running in this thread or task, and its pool.
_command: ContextVar[tuple[ConnectionPool, psycopg.Connection[Any]] | None] = ContextVar("command", default=None)

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


# How long the pool keeps retrying one connection (1, 2, 4 s apart) before it gives up and
# the next caller starts afresh at once. psycopg_pool's own five minutes let its delays double
# to two minutes: after an outage of a minute or more, a server stayed unusable for up to
# that long once PostgreSQL was back (every call "couldn't get a connection after 30 s").
RECONNECT_FOR = 10.0
# How long a caller waits for a connection before it is told PostgreSQL is unavailable:
# well inside a client's deadline (the CLI's is 30 s, psycopg_pool's own wait too), so a
# person sees that reason rather than DEADLINE_EXCEEDED, and a restart or failover shorter
# than this passes unnoticed.
WAIT_FOR_CONNECTION = 10.0
# ...but once every attempt to connect has failed for that long, the outage is known: a
# caller waits only this long (for an idle connection, or one made meanwhile) and is told
# since when. Each call waited the whole 10 s: every `job list`, console page and `/readyz`
# of a long outage, each holding a thread of the server's while it waited.
WAIT_WHILE_DOWN = 1.0
# How long a caller waits for another's probe of a known outage (``_Pool._probe``; a probe's
# own connect_timeout is 2 s).
PROBE_WAIT = 3.0


# How the server's connections find out that PostgreSQL's host stopped answering (a network
# partition, a host gone: no reset ever comes), each where the URL (or PGCONNECT_TIMEOUT) sets
# none: an attempt to connect gives up after connect_timeout s; a connection whose data goes
# unacknowledged for tcp_user_timeout ms, or that is idle and answers no keepalive within
# keepalives_idle + keepalives_interval * keepalives_count s, is ended. Without them every
# statement sent waited for the kernel's TCP retries (15 minutes), every attempt to connect
# for its SYN retries (2), so no attempt ever failed and the outage was never known: each call
# of a cut-off server waited its 10 s (WAIT_FOR_CONNECTION) to hear "couldn't get a
# connection", for as long as the cut lasted. Only TCP connections use them (libpq ignores
# them on a Unix socket).
NETWORK = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}

# Every connection's settings (PostgreSQL's, for the session). No JIT: PostgreSQL compiles a
# plan whose cost passes jit_above_cost at every execution (its code is not kept), and our
# queries are short: the queue's listing with 10,000 queued jobs, estimated far above it (a
# subquery a row), ran in 55 ms and compiled for 650 more, at every `queue` and every `job
# get` of a queued job. TCP keepalives and a user timeout on PostgreSQL's side too, as
# NETWORK's: a backend whose server vanished (its host lost, or cut off) is ended within
# about 25 s, and its locks go with it. PostgreSQL's own default left it for two hours
# (the kernel's), and with it the advisory lock that tells the other servers this one is
# alive (hodei.store.instances): nobody took its claims over; a lock held by a transaction
# it had open (the event log's turn, an admission's) would have stalled every writer.
SETTINGS = {
    "jit": "off",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "20000",
}


def conninfo(url: str) -> str:
    """``url`` with NETWORK's settings it does not give."""
    given = conninfo_to_dict(url)
    if "PGCONNECT_TIMEOUT" in os.environ:
        given["connect_timeout"] = os.environ["PGCONNECT_TIMEOUT"]
    return make_conninfo(url, **{key: value for key, value in NETWORK.items() if key not in given})


def _options(settings: Mapping[str, str] | None = None) -> str:
    return " ".join(f"-c {key}={value}" for key, value in {**SETTINGS, **(settings or {})}.items())


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection of its own (not a pool's), set as the pools' are."""
    return psycopg.connect(conninfo(url), options=_options(), **kwargs)


def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 20,
    name: str = "hodei",
    settings: Mapping[str, str] | None = None,
    workers: int = 3,
) -> ConnectionPool:
    """Opens a pool and waits until one connection works, so a wrong URL fails here.
    ``settings``: PostgreSQL settings of every connection of the pool (over ``SETTINGS``);
    ``workers``: the pool's own threads (they open and check its connections in the background)."""
    kwargs: dict[str, object] = {"application_name": name, "prepare_threshold": 0, "options": _options(settings)}
    pool: ConnectionPool = _Pool(
        conninfo(url),
        min_size=min_size,
        max_size=max_size,
        name=name,
        configure=_configure,
        open=False,
        num_workers=workers,
        reconnect_timeout=RECONNECT_FOR,
        timeout=WAIT_FOR_CONNECTION,
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


class _Outage:
    """Since when a pool's every attempt to connect has failed, and the last one's error
    (``since`` None: the last attempt worked). Written by the pool's own threads as they
    connect, read by callers: one assignment each, no lock needed."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.error = ""

    def failed(self, exc: Exception) -> None:
        self.error = " ".join(str(exc).split())  # psycopg's errors span lines
        if self.since is None:
            self.since = time.time()

    def over(self) -> None:
        self.since = None

    def known(self) -> str | None:
        """What to tell a caller once attempts have failed for WAIT_FOR_CONNECTION, else None."""
        since = self.since
        if since is None or time.time() - since < WAIT_FOR_CONNECTION:
            return None
        at = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"no connection to it could be made since {at}, {time.time() - since:.0f} s ago "
            f"(the last try: {self.error}); the server keeps trying"
        )


def _noting(outage: _Outage) -> type[psycopg.Connection[Any]]:
    """A connection class that tells ``outage`` how each of its pool's attempts went
    (psycopg_pool makes every connection with its ``connection_class``)."""

    class Connection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Self:
            try:
                conn = super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                outage.failed(exc)
                raise
            outage.over()
            return conn

    return Connection


class _Pool(ConnectionPool):
    """Hands out no connection PostgreSQL has already ended, and tells a caller at once
    when it has been unable to connect for WAIT_FOR_CONNECTION (``_Outage``), unless
    PostgreSQL takes a connection again as it asks (``_probe``). A restart of PostgreSQL (a
    failover, ``pg_terminate_backend``) ends every connection idle in the pool, and each
    was handed out once more: the call it served failed with "terminating connection due
    to administrator command" after the outage was over (a person's ``job list``, a
    ``job cancel``). PostgreSQL says so on the socket as it ends one, so an idle
    connection with something to read is checked before it is given (a poll without
    waiting: nothing else is sent to an idle connection, but a notice); one found ended
    sends every idle connection to the same check (``check``: the others ended with it)
    and the caller gets a new one, at once rather than after psycopg_pool's own check's
    pause of a second."""

    def __init__(self, conninfo: str, *, kwargs: dict[str, Any], **options: Any) -> None:
        self.outage = _Outage()
        self._probing = threading.Lock()
        # libpq's shortest connect_timeout (2 s) bounds a probe of a host that answers nothing.
        self._probe_with = (conninfo, {**kwargs, "connect_timeout": 2})
        super().__init__(conninfo, kwargs=kwargs, connection_class=_noting(self.outage), **options)

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        known = self.outage.known() if timeout is None else None
        try:
            return self._live(WAIT_WHILE_DOWN if known is not None else timeout)
        except PoolTimeout:
            if known is None:
                raise
            if not self._probe():
                raise PoolTimeout(self.outage.known() or known) from None
        return self._live(timeout)  # back: the pool's next try (seconds away at most) serves it

    def _live(self, timeout: float | None) -> psycopg.Connection[Any]:
        conn = super().getconn(timeout)
        if not _ended(conn):
            return conn
        self.putconn(conn)  # closed by the check: the pool makes another
        self.check()
        return super().getconn(timeout)

    def _probe(self) -> bool:
        """Whether PostgreSQL takes a connection now (noted in ``outage``). The pool's own
        tries come 1, 2, 4, 8 s apart: the first call after an outage would be told it goes on.
        One caller probes at a time. One that finds a probe under way waits for it (at most
        PROBE_WAIT), then tries itself unless that one found PostgreSQL back: told at once,
        as it was, the first `job list` after PostgreSQL's return was told the outage went on
        when a sweep's probe, begun just before, was still failing (a loaded CI run)."""
        if not self._probing.acquire(timeout=PROBE_WAIT):
            return False
        conninfo, kwargs = self._probe_with
        try:
            if self.outage.since is None:
                return True
            with self.connection_class.connect(conninfo, **kwargs):
                return True
        except psycopg.Error:
            return False
        finally:
            self._probing.release()


def _ended(conn: psycopg.Connection[Any]) -> bool:
    """Whether PostgreSQL ended this idle connection (its goodbye is waiting on the socket)."""
    try:
        readable = select.poll()
        readable.register(conn.fileno(), select.POLLIN)
        if not readable.poll(0):
            return False
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


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
        raise StoreUnavailable(f"{StoreUnavailable.PREFIX}: {exc}") from exc
    except TimeoutError as exc:
        # psycopg_pool.PoolTimeout subclasses OperationalError; plain timeouts come from pool.open.
        raise StoreUnavailable(f"{StoreUnavailable.PREFIX}: {exc}") from exc


@contextlib.contextmanager
def command_transaction(pool: ConnectionPool) -> Iterator[None]:
    """Makes the statements this thread or task runs on ``pool`` (``fetch_*``, ``execute``,
    the event store's reads), then its write to the event log, one transaction: a
    command's try (``HodeiStore.command``) reads the job's flow and whatever its decision
    needs, then saves, and each read standing alone was a transaction of its own, more of
    them than writes. The transaction begins with the first statement (``connection``) and
    ends with the write's COMMIT, or here when the try wrote nothing or failed: what it
    ran is rolled back with it. Reads take no lock a writer waits for, so it holds none
    until the write, while an action the try waits for runs (an action runs on its own
    connections); an advisory lock taken with ``pg_advisory_xact_lock`` is held until it
    ends.

    Inside another (a relay handler's, ``hodei.relay``), it uses the same connection:
    what the handler read before is part of the command's transaction, which still ends
    with the command."""
    outer = command_connection(pool)
    if outer is not None:
        with _ending(outer):
            yield
        return
    with translate_errors():
        conn = pool.getconn()
    token = _command.set((pool, conn))
    try:
        with _ending(conn):
            yield
    finally:
        _command.reset(token)
        pool.putconn(conn)


@contextlib.contextmanager
def _ending(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Commits what is left open (reads, an advisory lock), or rolls it back on failure."""
    try:
        yield
    except BaseException:
        roll_back(conn)
        raise
    if conn.info.transaction_status is not TransactionStatus.IDLE:
        with translate_errors():
            conn.execute("COMMIT")


def command_connection(pool: ConnectionPool) -> psycopg.Connection[Any] | None:
    """The connection of the ``command_transaction`` of this thread or task, if any."""
    command = _command.get()
    return command[1] if command is not None and command[0] is pool else None


@contextlib.contextmanager
def connection(pool: ConnectionPool) -> Iterator[psycopg.Connection[Any]]:
    """A connection for a statement: inside a ``command_transaction``, its own (the first
    statement begins the transaction, which commits or rolls back with the command's);
    otherwise one of the pool's, the statement a transaction alone."""
    conn = command_connection(pool)
    if conn is None:
        with pool.connection() as own:
            yield own
        return
    if conn.info.transaction_status is TransactionStatus.IDLE:
        conn.execute("BEGIN")
    yield conn


def roll_back(conn: psycopg.Connection[Any]) -> None:
    """Ends a failed transaction (a failed pipeline leaves it aborted), unless the link is
    gone. Through libpq: psycopg answers a ROLLBACK it runs with DEALLOCATE ALL (a
    statement of its own) and forgets the connection's prepared statements, to be parsed
    and planned again, in case the transaction dropped what they name; PostgreSQL keeps
    them across a rollback, and Hodei's transactions change no schema. A lost race (a
    command's try run again) rolls back about once a job."""
    if not conn.closed and conn.info.transaction_status is not TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.pgconn.exec_(b"ROLLBACK")


def fetch_all(
    pool: ConnectionPool,
    name: str,
    params: Any,
    row: Callable[..., T],
    constants: Mapping[str, bool] | None = None,
) -> list[T]:
    """Runs the named query and returns its rows as ``row(**columns)``: a dataclass whose
    fields are the query's columns, in any order, or a function taking them by name.
    ``constants``: see ``hodei.store.sql.query``."""
    with translate_errors(), connection(pool) as conn, conn.cursor(row_factory=kwargs_row(row)) as cur:
        return cur.execute(query(name, constants), params).fetchall()


def fetch_one(pool: ConnectionPool, name: str, params: Any, row: Callable[..., T]) -> T | None:
    found = fetch_all(pool, name, params, row)
    return found[0] if found else None


def fetch_column(
    pool: ConnectionPool, name: str, params: Any = None, constants: Mapping[str, bool] | None = None
) -> list[Any]:
    """The first column of every row."""
    with translate_errors(), connection(pool) as conn:
        return [found[0] for found in conn.execute(query(name, constants), params).fetchall()]


def fetch_value(pool: ConnectionPool, name: str, params: Any = None) -> Any:
    """The first column of the first row (None without rows)."""
    with translate_errors(), connection(pool) as conn:
        found = conn.execute(query(name), params).fetchone()
    return None if found is None else found[0]


def execute(pool: ConnectionPool, name: str, params: Any = None) -> int:
    """Runs the named statement; returns the number of rows it touched."""
    with translate_errors(), connection(pool) as conn:
        return conn.execute(query(name), params).rowcount
