"""Applies the numbered SQL files in ``sql/`` once each, recording them in
``hodei.schema_migrations`` (outside ``public``, so the seed's table list stays exact)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

from hodei.errors import HodeiError
from hodei.store.db import connect, translate_errors

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Any constant works; it only keeps two servers starting at once from racing.
_LOCK_KEY = 0x48_4F_44_45_49  # "HODEI"

_LEDGER = """
CREATE SCHEMA IF NOT EXISTS hodei;
CREATE TABLE IF NOT EXISTS hodei.schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def default_sql_dir() -> Path:
    """The migrations shipped in the package: ``hodei/sql`` links to the repository's
    ``sql/`` (the canonical place), and a wheel carries the files themselves."""
    path = Path(str(resources.files("hodei") / "sql"))
    if not any(path.glob("*.sql")):
        raise HodeiError(f"no migrations in {path}: this installation of hodei is incomplete")
    return path


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise HodeiError(f"migration file `{path.name}` is not named NNN_description.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise HodeiError(f"two migrations in {sql_dir} share a number")
    return found


def migrate(database_url: str, sql_dir: Path | None = None) -> list[Migration]:
    """Applies pending migrations, each in its own transaction; returns those applied.
    Refuses, applying nothing, a database that a newer version migrated (``NewerDatabase``)."""
    migrations = discover(sql_dir or default_sql_dir())
    applied: list[Migration] = []
    with translate_errors(), connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_LEDGER)
            _refuse_newer(conn, migrations)
            done: dict[int, str] = dict(
                conn.execute("SELECT version, checksum FROM hodei.schema_migrations").fetchall()
            )
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise HodeiError(
                            f"migration {migration.path.name} changed after it was applied; add a new file instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO hodei.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


class NewerDatabase(HodeiError):
    """The database has migrations this version does not ship. Such a server would write
    rows and events by older rules beside the newer servers' (and fail on their events),
    so it does not start, and one already running is not ready (``/readyz``)."""


def check_not_newer(database_url: str) -> None:
    """Raises NewerDatabase when a newer version migrated the database (what a server
    that does not migrate at start, or only reads and rebuilds, checks instead)."""
    with translate_errors(), connect(database_url, autocommit=True) as conn:
        _refuse_newer(conn, discover(default_sql_dir()))


def schema_problem(conn: psycopg.Connection[Any], sql_dir: Path | None = None) -> str | None:
    """What keeps this server from being ready on the database's schema (``/readyz``):
    migrations not applied yet, or applied by a newer version; None when neither."""
    migrations = discover(sql_dir or default_sql_dir())
    done = _ledger(conn)
    newer = _newer(done, migrations)
    if newer:
        return newer
    missing = [m.path.name for m in migrations if m.version not in done]
    return f"migrations not applied: {', '.join(missing)}" if missing else None


def _refuse_newer(conn: psycopg.Connection[Any], migrations: list[Migration]) -> None:
    newer = _newer(_ledger(conn), migrations)
    if newer:
        raise NewerDatabase(newer)


def _ledger(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """Each applied migration's file name by its number (none before the ledger exists)."""
    exists = conn.execute("SELECT to_regclass('hodei.schema_migrations') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return {}
    rows = conn.execute("SELECT version, name FROM hodei.schema_migrations ORDER BY version").fetchall()
    return {version: f"{version:03d}_{name}.sql" for version, name in rows}


def _newer(done: dict[int, str], migrations: list[Migration]) -> str | None:
    """What is wrong when the ledger ``done`` has migrations that ``migrations`` lack."""
    shipped = {m.version for m in migrations}
    names = [name for number, name in done.items() if number not in shipped]
    if not names:
        return None
    return (
        f"this database was migrated by a newer hodei than this one ({version('hodei-jobs')}): it has "
        f"{', '.join(names)}, which this version does not ship. Run that version or a newer one; "
        "going back to this one needs the database as it was before the upgrade (a backup)"
    )
