"""Queries on the read models, for the API and the CLI (no aggregate loading)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from hodei.errors import NotFound
from hodei.store.db import translate_errors
from hodei.store.sql import query


def job_uuid(text: str) -> UUID:
    """A job id as the user typed it; NotFound (not a database error) when it is no id."""
    try:
        return UUID(text.strip())
    except ValueError:
        shown = text if len(text) <= 64 and text.isprintable() else repr(text[:64])
        raise NotFound(f"job {shown} not found (job ids are UUIDs)") from None


@dataclass(frozen=True)
class JobRow:
    id: UUID
    name: str
    state: str
    spec: dict[str, Any]
    selected_provider_id: UUID | None
    provider_type: str | None
    worker_id: UUID | None
    exit_code: int | None
    error_message: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    storage_uri: str | None
    submitted_by: str | None
    cancelled_by: str | None


@dataclass(frozen=True)
class WorkerRow:
    id: UUID
    job_id: UUID
    state: str
    provider_type: str
    provider_resource_id: str | None
    error_message: str | None


@dataclass(frozen=True)
class ProviderRow:
    id: UUID
    name: str
    provider_type: str
    status: str
    health: str
    health_message: str | None


class ReadModels:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _all(self, name: str, params: Any = None) -> list[dict[str, Any]]:
        with translate_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query(name), params).fetchall()

    def job(self, job_id: str) -> JobRow:
        rows = self._all("get_job", (job_uuid(job_id),))
        if not rows:
            raise NotFound(f"job {job_id} not found")
        return JobRow(**rows[0])

    def jobs(self, state: str | None, limit: int, offset: int) -> tuple[list[JobRow], int]:
        params = {"state": state, "limit": limit, "offset": offset}
        rows = [JobRow(**row) for row in self._all("list_jobs", params)]
        total = self._all("count_jobs", params)[0]["count"]
        return rows, int(total)

    def counts(self, name: str) -> dict[str, int]:
        return {row["state"]: int(row["count"]) for row in self._all(name)}

    def workers(self, state: str | None, limit: int) -> list[WorkerRow]:
        return [WorkerRow(**row) for row in self._all("list_workers", {"state": state, "limit": limit})]

    def providers(self) -> list[ProviderRow]:
        return [ProviderRow(**row) for row in self._all("list_providers")]

    def outbox_stats(self) -> tuple[int, int, int]:
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(query("outbox_stats")).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
