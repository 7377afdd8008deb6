"""Queries on the read models, for the API and the CLI (no aggregate loading)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from hodei.domain.phases import Phase, phases_of
from hodei.domain.provider import PROVIDER_IDS, ProviderType, ResourceLimits
from hodei.domain.spec import LabelSelector
from hodei.errors import InvalidInput, NotFound
from hodei.store.db import fetch_one, fetch_value, translate_errors
from hodei.store.events import EventRecord, unpack
from hodei.store.sql import query

# A unique prefix of an id, as people copy it from a table: at least 8 hex digits.
MIN_PREFIX = 8
_PREFIX = re.compile(r"[0-9a-fA-F-]+")


_PREFIX_QUERIES = {"job": "jobs_in_id_range", "saga": "sagas_in_id_range"}
# The rank queries.sql's run_rank gives a branch not taken, the last: a job the platform
# cancelled because a job it starts after ended otherwise than asked.
SKIPPED = 7


def _shown(text: str) -> str:
    return text if len(text) <= 64 and text.isprintable() else repr(text[:64])


def _id_range(text: str) -> tuple[UUID, UUID] | None:
    """The ids a prefix stands for (lowest, highest); None when it is not a prefix."""
    digits = text.replace("-", "")
    if not _PREFIX.fullmatch(text) or not MIN_PREFIX <= len(digits) < 32:
        return None
    return UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))


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
    retry_of: UUID | None
    retry_at: datetime | None
    # Held in the queue (`job hold`): by whom (None: not held) and why.
    held_by: str | None
    hold_reason: str | None
    retried_by: list[UUID]
    # The jobs submitted to start after this one (--after).
    waited_on_by: list[UUID]
    # What all its attempts used (sql/033).
    run_seconds: float
    cpu_seconds: float | None
    peak_memory_bytes: int | None


@dataclass(frozen=True)
class WorkerRow:
    id: UUID
    job_id: UUID
    state: str
    provider_type: str
    provider_resource_id: str | None
    error_message: str | None
    last_seen_at: datetime | None


@dataclass(frozen=True)
class JobFilters:
    """What a job list may be narrowed to, besides its state (None: any)."""

    provider: str | None = None
    name: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)
    created_since: datetime | None = None
    submitter: str | None = None


def job_list_params(state: str | None, limit: int, offset: int, wanted: JobFilters) -> dict[str, Any]:
    """The parameters of ``list_jobs`` and ``count_jobs`` (also what bench-console times)."""
    return {
        "state": state,
        "limit": limit,
        "offset": offset,
        "provider": wanted.provider,
        "name": wanted.name,
        "labels": Jsonb(dict(wanted.labels.equal)) if wanted.labels.equal else None,
        "labels_not": Jsonb([list(pair) for pair in wanted.labels.not_equal]) if wanted.labels.not_equal else None,
        "labels_present": list(wanted.labels.present) or None,
        "labels_absent": list(wanted.labels.absent) or None,
        "since": wanted.created_since,
        "submitter": wanted.submitter,
    }


@dataclass(frozen=True)
class JobWorkerRow:
    id: UUID
    attempt: int
    state: str
    provider_type: str
    provider_resource_id: str | None
    error_message: str | None
    created_at: datetime
    registered_at: datetime | None
    last_seen_at: datetime | None


@dataclass(frozen=True)
class StepRow:
    step_name: str
    step_order: int
    state: str
    retry_count: int
    error_message: str | None
    started_at: datetime | None
    completed_at: datetime | None


@dataclass(frozen=True)
class AuditRow:
    event_type: str
    step_name: str | None
    message: str
    occurred_at: datetime


@dataclass(frozen=True)
class SagaRow:
    id: UUID
    saga_type: str
    state: str
    correlation_id: str
    attempt: int
    current_step: str | None
    error_message: str | None
    started_at: datetime
    completed_at: datetime | None
    steps: tuple[StepRow, ...] = ()
    audit: tuple[AuditRow, ...] = ()


@dataclass(frozen=True)
class ProviderRow:
    id: UUID
    name: str
    provider_type: str
    status: str
    health: str
    health_message: str | None
    config: dict[str, Any]

    @property
    def resource_limits(self) -> ResourceLimits:
        return ResourceLimits.of(self.config)


class ReadModels:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _all(self, name: str, params: Any = None) -> list[dict[str, Any]]:
        with translate_errors(), self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query(name), params).fetchall()

    def resolve(self, kind: Literal["job", "saga"], text: str) -> UUID:
        """A job's or saga's id (``kind``) as people type it: whole, or any unique prefix
        of at least 8 characters. NotFound (not a database error) when nothing matches."""
        text = text.strip()
        try:
            return UUID(text)
        except ValueError:
            pass
        bounds = _id_range(text)
        if bounds is None:
            raise NotFound(
                f"{kind} {_shown(text)} not found ({kind} ids are UUIDs; a prefix needs {MIN_PREFIX} characters)"
            )
        found = [row["id"] for row in self._all(_PREFIX_QUERIES[kind], bounds)]
        if not found:
            raise NotFound(f"no {kind} id starts with {text}")
        if len(found) > 1:
            raise InvalidInput(f"{text} is the start of more than one {kind} id; give more of it")
        return UUID(str(found[0]))

    def array_jobs(self, array_id: str) -> list[tuple[str, str]]:
        """(job id, state) of every job of an array, in submission order."""
        return [(row["job_id"], row["state"]) for row in self._all("jobs_of_array", (array_id,))]

    def workflow_jobs(self, workflow_id: str) -> list[tuple[JobRow, int]]:
        """Every job of a pipeline (its label hodei.io/workflow), as submitted and then their
        copies, each with its rank in the pipeline's state (queries.sql's run_rank: lowest
        first, ``SKIPPED`` last)."""
        rows = self._all("workflow_jobs", (workflow_id,))
        return [(JobRow(**{key: row[key] for key in row if key != "rank"}), row["rank"]) for row in rows]

    def job(self, job_id: str) -> JobRow:
        rows = self._all("get_job", (self.resolve("job", job_id),))
        if not rows:
            raise NotFound(f"job {job_id} not found")
        return JobRow(**rows[0])

    def jobs(
        self, state: str | None, limit: int, offset: int, filters: JobFilters | None = None
    ) -> tuple[list[JobRow], int]:
        params = job_list_params(state, limit, offset, filters or JobFilters())
        rows = [JobRow(**row) for row in self._all("list_jobs", params)]
        total = self._all("count_jobs", params)[0]["count"]
        return rows, int(total)

    def counts(self, name: str) -> dict[str, int]:
        return {row["state"]: int(row["count"]) for row in self._all(name)}

    def workers(self, state: str | None, limit: int, live: bool = False) -> list[WorkerRow]:
        params = {"state": state, "limit": limit, "live": live}
        return [WorkerRow(**row) for row in self._all("list_workers", params)]

    def providers(self) -> list[ProviderRow]:
        return [ProviderRow(**row) for row in self._all("list_providers")]

    def provider(self, provider_type: str) -> ProviderRow | None:
        """Its row (None: not registered), one row read."""
        return fetch_one(self.pool, "provider_state", (PROVIDER_IDS[ProviderType(provider_type)],), ProviderRow)

    def sagas(self, state: str | None, saga_type: str | None, job_id: str | None, limit: int) -> list[SagaRow]:
        params = {"state": state, "saga_type": saga_type, "job_id": job_id, "limit": limit}
        return [SagaRow(**row) for row in self._all("list_sagas", params)]

    def saga(self, saga_id: str) -> SagaRow:
        try:
            found = self._with_steps(
                [SagaRow(**row) for row in self._all("get_saga", (self.resolve("saga", saga_id),))]
            )
        except NotFound as exc:
            raise NotFound(exc.message + self._a_job(saga_id)) from None
        if not found:
            raise NotFound(f"saga {saga_id} not found" + self._a_job(saga_id))
        return found[0]

    def _a_job(self, text: str) -> str:
        """Where a job's id was given for a saga's (it is what people have at hand): where
        its sagas are; "" when it names no job."""
        try:
            self.job(text)
        except (NotFound, InvalidInput):
            return ""
        return f"; {text} is a job: `saga list --job {text}` lists its sagas, `job describe {text}` shows them"

    def sagas_of_job(self, job_id: UUID) -> list[SagaRow]:
        """Oldest first, each with its steps and audit trail."""
        return self._with_steps([SagaRow(**row) for row in self._all("sagas_of_job", (str(job_id),))])

    def _with_steps(self, sagas: list[SagaRow]) -> list[SagaRow]:
        ids = [saga.id for saga in sagas]
        steps: dict[UUID, list[StepRow]] = {saga_id: [] for saga_id in ids}
        audit: dict[UUID, list[AuditRow]] = {saga_id: [] for saga_id in ids}
        for row in self._all("steps_of_sagas", (ids,)):
            steps[row.pop("saga_id")].append(StepRow(**row))
        for row in self._all("audit_of_sagas", (ids,)):
            audit[row.pop("saga_id")].append(AuditRow(**row))
        return [replace(saga, steps=tuple(steps[saga.id]), audit=tuple(audit[saga.id])) for saga in sagas]

    def workers_of_job(self, job_id: UUID) -> list[JobWorkerRow]:
        return [JobWorkerRow(**row) for row in self._all("workers_of_job", (job_id,))]

    def execs_of_job(self, job_id: UUID) -> list[dict[str, Any]]:
        """The commands run in it (`job exec`), as the projection keeps them (sql/031)."""
        found: list[dict[str, Any]] | None = fetch_value(self.pool, "execs_of_job", (job_id,))
        return found or []

    def phases(self, job_id: UUID) -> list[Phase]:
        rows = self._all("events_of_job", {"job_id": str(job_id)})
        events = (event for row in rows for event in unpack(EventRecord(**row)))  # a worker's row of moves
        return phases_of((event.aggregate_id, event.event_type, event.occurred_at, event.payload) for event in events)

    def children_not_ended(self, job_id: str) -> int:
        """The jobs ``job_id`` submitted with its API token that have not ended."""
        return int(fetch_value(self.pool, "children_not_ended", (job_id,)))

    def job_created_at(self, job_id: str) -> datetime | None:
        found: datetime | None = fetch_value(self.pool, "job_created_at", (job_id,))
        return found

    def step_started(self, saga_id: str, step_order: int) -> datetime | None:
        found: datetime | None = fetch_value(self.pool, "step_started_at", (saga_id, step_order))
        return found

    def saga_type(self, saga_id: str) -> str:
        return str(fetch_value(self.pool, "saga_type_of", (saga_id,)) or "unknown")

    def worker_provider(self, worker_id: str) -> str:
        return str(fetch_value(self.pool, "worker_provider_of", (worker_id,)) or "unknown")

    def outbox_stats(self) -> tuple[int, int, int]:
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(query("outbox_stats")).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
