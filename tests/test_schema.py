"""The database as the seed sees it: nine tables, two providers, idempotent migrations,
CHECK constraints equal to the domain's states."""

from __future__ import annotations

import re

import psycopg
import pytest

from e2e.seed import SEED_TABLES
from hodei.domain.job import JobState
from hodei.domain.provider import ProviderHealth, ProviderStatus, ProviderType
from hodei.domain.saga import SagaState, SagaType, StepState
from hodei.domain.worker import WorkerState
from hodei.store.migrations import migrate
from hodei.testing import query


def test_public_holds_exactly_the_nine_seed_tables(database_url: str) -> None:
    rows = query(
        database_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    assert sorted(r[0] for r in rows) == sorted(SEED_TABLES)


def test_provider_configs_holds_the_seed_rows(database_url: str) -> None:
    rows = query(database_url, "SELECT id::text, provider_type, status FROM provider_configs ORDER BY provider_type")
    assert rows == [
        ("11111111-1111-1111-1111-111111111111", "docker", "ACTIVE"),
        ("22222222-2222-2222-2222-222222222222", "kubernetes", "ACTIVE"),
    ]


def test_a_second_migration_changes_nothing(fresh_database_url: str) -> None:
    def snapshot() -> list[tuple[object, ...]]:
        return query(
            fresh_database_url,
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema IN ('public', 'hodei') ORDER BY 1, 2, 3",
        ) + query(fresh_database_url, "SELECT version, checksum FROM hodei.schema_migrations ORDER BY 1")

    before = snapshot()
    assert migrate(fresh_database_url) == []
    assert snapshot() == before


def test_the_migration_ledger_is_outside_public(database_url: str) -> None:
    rows = query(
        database_url,
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'schema_migrations'",
    )
    assert rows == [("hodei",)]


def _check_values(url: str, table: str, column: str) -> set[str]:
    rows = query(
        url,
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "WHERE t.relname = %s AND c.contype = 'c' AND pg_get_constraintdef(c.oid) LIKE %s",
        (table, f"%({column})::text%"),
    )
    assert len(rows) == 1, rows
    return set(re.findall(r"'([^']+)'", rows[0][0]))


@pytest.mark.parametrize(
    ("table", "column", "states"),
    [
        ("jobs", "state", {s.value for s in JobState}),
        ("workers", "state", {s.value for s in WorkerState}),
        ("sagas", "state", {s.value for s in SagaState}),
        ("sagas", "saga_type", {s.value for s in SagaType}),
        ("saga_steps", "state", {s.value for s in StepState}),
        ("provider_configs", "status", {s.value for s in ProviderStatus}),
        ("provider_configs", "health", {s.value for s in ProviderHealth}),
        ("provider_configs", "provider_type", {s.value for s in ProviderType}),
    ],
)
def test_check_constraints_list_exactly_the_domain_states(
    database_url: str, table: str, column: str, states: set[str]
) -> None:
    assert _check_values(database_url, table, column) == states


def test_domain_events_is_append_only(fresh_database_url: str, store: object) -> None:
    from uuid import uuid4

    from hodei.domain.job import Job
    from hodei.domain.spec import JobSpec
    from hodei.store.app import HodeiStore, Meta

    assert isinstance(store, HodeiStore)
    store.write([Job.submit(JobSpec(name="x", command="true", timeout_seconds=5), uuid4())], Meta(actor="test"))
    for statement in (
        "UPDATE domain_events SET actor = 'x'",
        "DELETE FROM domain_events",
        "TRUNCATE domain_events CASCADE",
    ):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            query(fresh_database_url, statement)
