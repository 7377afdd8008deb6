"""Versions sharing a database: a server older than the database's migrations (a newer
version migrated it, then an old one was started again, or a rolling upgrade) must not run
by its older rules beside the newer servers. It refuses to start, migrate, rebuild or make
tokens, applying nothing; one already running says it is not ready."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import requests

from hodei.testing import ServerProcess, hodei_server, query

pytestmark = pytest.mark.e2e

FUTURE = "999_from_a_newer_version.sql"


def _newer(url: str) -> None:
    """The ledger as a newer version would leave it: one migration more than ours."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO hodei.schema_migrations (version, name, checksum) VALUES (999, 'from_a_newer_version', 'x')"
        )


def _ledger(url: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT version, checksum FROM hodei.schema_migrations ORDER BY version")


def test_an_older_server_refuses_a_database_a_newer_version_migrated(fresh_database_url: str, tmp_path: Path) -> None:
    newer_database = fresh_database_url
    _newer(newer_database)
    ledger = _ledger(newer_database)
    shown = hodei_server(newer_database, "--version")
    assert shown.returncode == 0 and shown.stdout.startswith("hodei-server ")
    ours = shown.stdout.split()[1]
    said = f"this database was migrated by a newer hodei than this one ({ours})"
    for env in ({}, {"HODEI_AUTO_MIGRATE": "0"}):
        server = ServerProcess(newer_database, tmp_path / f"logs-{len(env)}", env)
        with pytest.raises(RuntimeError, match="exited with 78") as refused:
            server.start()
        assert said in str(refused.value) and FUTURE in str(refused.value)
        assert "Run that version or a newer one" in str(refused.value)
    for command in (["migrate"], ["replay", "--apply"], ["replay", "--verify"], ["relay"], ["token", "list"]):
        ran = hodei_server(newer_database, *command)
        assert ran.returncode == 78, (command, ran.stdout, ran.stderr)
        assert f"hodei-server: {said}" in ran.stderr and FUTURE in ran.stderr, command
    assert _ledger(newer_database) == ledger  # nothing applied, nothing rebuilt


def test_a_running_server_is_not_ready_once_a_newer_version_migrated_its_database(
    fresh_database_url: str, tmp_path: Path
) -> None:
    with ServerProcess(fresh_database_url, tmp_path, http=True) as server:
        assert requests.get(f"{server.http_url}/readyz", timeout=10).text == "ready\n"
        _newer(fresh_database_url)
        answer = requests.get(f"{server.http_url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert answer.text.startswith("not ready: this database was migrated by a newer hodei than this one")
        assert FUTURE in answer.text
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM hodei.schema_migrations WHERE version = 999")
            conn.execute(
                "DELETE FROM hodei.schema_migrations WHERE version = (SELECT max(version) FROM hodei.schema_migrations)"
            )
        behind = requests.get(f"{server.http_url}/readyz", timeout=10)
        assert behind.status_code == 503 and behind.text.startswith("not ready: migrations not applied: ")
