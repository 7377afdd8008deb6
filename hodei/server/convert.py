"""Protobuf at the edge: conversions between API messages and domain values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from hodei._proto import common_pb2, jobs_pb2, sagas_pb2
from hodei.domain.job import JobState
from hodei.domain.phases import Phase, latest_outputs
from hodei.domain.spec import JobSpec
from hodei.store.readmodels import JobRow, JobWorkerRow, SagaRow, StepRow
from hodei.wire import spec_to_proto


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _seconds(started: datetime | None, completed: datetime | None) -> float:
    """How long something took, or has taken so far while it runs."""
    if started is None:
        return 0.0
    return ((completed or datetime.now(UTC)) - started).total_seconds()


_COMPENSATION_STATES = {"COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"}


def step_to_proto(step: StepRow) -> sagas_pb2.SagaStep:
    return sagas_pb2.SagaStep(
        name=step.step_name,
        order=step.step_order,
        state=step.state,
        retry_count=step.retry_count,
        error_message=step.error_message or "",
        started_at=timestamp(step.started_at),
        completed_at=timestamp(step.completed_at),
        duration_seconds=_seconds(step.started_at, step.completed_at),
        compensated=step.state in _COMPENSATION_STATES,
    )


def saga_to_proto(saga: SagaRow) -> sagas_pb2.Saga:
    return sagas_pb2.Saga(
        id=str(saga.id),
        saga_type=saga.saga_type,
        state=saga.state,
        correlation_id=saga.correlation_id,
        attempt=saga.attempt,
        current_step=saga.current_step or "",
        error_message=saga.error_message or "",
        started_at=timestamp(saga.started_at),
        completed_at=timestamp(saga.completed_at),
        duration_seconds=_seconds(saga.started_at, saga.completed_at),
        steps=[step_to_proto(step) for step in saga.steps],
        audit=[
            sagas_pb2.SagaAuditEvent(
                event_type=entry.event_type,
                step_name=entry.step_name or "",
                message=entry.message,
                occurred_at=timestamp(entry.occurred_at),
            )
            for entry in saga.audit
        ],
    )


def worker_to_proto(worker: JobWorkerRow) -> jobs_pb2.JobWorker:
    return jobs_pb2.JobWorker(
        id=str(worker.id),
        attempt=worker.attempt,
        state=worker.state,
        provider_type=worker.provider_type,
        provider_resource_id=worker.provider_resource_id or "",
        error_message=worker.error_message or "",
        created_at=timestamp(worker.created_at),
        registered_at=timestamp(worker.registered_at),
        last_heartbeat_at=timestamp(worker.last_seen_at),
    )


def exec_to_proto(entry: dict[str, Any]) -> jobs_pb2.JobExec:
    """A command run in a job (`job exec`), from its entry of the jobs' ``execs`` column."""
    ran = jobs_pb2.JobExec(
        index=entry["index"],
        attempt=entry["attempt"],
        argv=entry["argv"],
        timeout_seconds=entry["timeout_seconds"],
        requested_by=entry["by"] or "",
        requested_at=timestamp(datetime.fromisoformat(entry["requested_at"])),
    )
    if "exit_code" in entry:
        ran.exit_code = entry["exit_code"]
        ran.message = entry["message"]
        ran.ended_at.FromDatetime(datetime.fromisoformat(entry["ended_at"]))
        ran.stdout_bytes = entry["stdout_bytes"]
        ran.stderr_bytes = entry["stderr_bytes"]
    return ran


def phase_to_proto(phase: Phase) -> common_pb2.JobPhase:
    return common_pb2.JobPhase(
        name=phase.name,
        at=timestamp(phase.at),
        attempt=phase.attempt,
        detail=phase.detail,
        cpu_seconds=phase.cpu_seconds,
        peak_memory_bytes=phase.peak_memory_bytes,
    )


def job_to_proto(row: JobRow, phases: list[Phase] | None = None) -> common_pb2.Job:
    state = JobState(row.state)
    return common_pb2.Job(
        id=str(row.id),
        spec=spec_to_proto(JobSpec.from_payload(row.spec)),
        status=state.code,  # type: ignore[arg-type]
        state=state.value,
        provider_id=str(row.selected_provider_id or ""),
        provider_type=row.provider_type or "",
        worker_id=str(row.worker_id or ""),
        has_exit_code=row.exit_code is not None,
        exit_code=row.exit_code or 0,
        error_message=row.error_message or "",
        created_at=timestamp(row.created_at),
        started_at=timestamp(row.started_at),
        completed_at=timestamp(row.completed_at),
        attempt=row.attempt,
        log_uri=row.storage_uri or "",
        submitted_by=row.submitted_by or "",
        cancelled_by=row.cancelled_by or "",
        phases=[phase_to_proto(phase) for phase in phases or ()],
        outputs=latest_outputs(phases or ()),
        retry_of=str(row.retry_of or ""),
        retried_by=[str(job_id) for job_id in row.retried_by],
        waited_on_by=[str(job_id) for job_id in row.waited_on_by],
        retry_at=timestamp(row.retry_at),
        held_by=row.held_by or "" if state is JobState.PENDING else "",
        hold_reason=row.hold_reason or "" if state is JobState.PENDING else "",
        run_seconds=row.run_seconds,
        cpu_seconds=row.cpu_seconds,
        peak_memory_bytes=row.peak_memory_bytes,
    )
