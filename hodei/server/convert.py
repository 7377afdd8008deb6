"""Protobuf at the edge: conversions between API messages and domain values."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hodei._proto import common_pb2
from hodei.domain.job import JobState
from hodei.domain.spec import JobSpec
from hodei.store.readmodels import JobRow
from hodei.wire import spec_to_proto


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def job_to_proto(row: JobRow) -> common_pb2.Job:
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
    )
