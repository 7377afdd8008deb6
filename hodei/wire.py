"""The job spec on the wire: ``hodei.jobs.JobSpec`` to and from the domain's ``JobSpec``
(same field names), for the server and the CLI alike; the most a listing returns; and the
API's messages as the CLI and the web console both show them (a job and a pipeline in JSON,
what a job starts after by name, what a running job uses), so the two never say it twice."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message

from hodei._proto import common_pb2, jobs_pb2
from hodei.domain.job import JobState
from hodei.domain.phases import size_text
from hodei.domain.placement import canonical_tolerations
from hodei.domain.retries import canonical_retry_on
from hodei.domain.spec import JobSpec, canonical_time, name_for, refuse_server_labels

# GetQueueStatus lists at most this many queued jobs: `job get` and `job run --wait` look
# for a job's place among them.
MAX_QUEUE_LISTED = 1000
# ListJobs answers at most this many jobs a call: a longer list is read page by page.
MAX_JOBS_LISTED = 1000


def spec_from_proto(message: common_pb2.JobSpec, secret_names: Iterable[str] = ()) -> JobSpec:
    """The request's spec; a job without a name is named after its command. The secret
    names come from the request's secrets, never from the client's spec, and labels of the
    server's own (``hodei.io/``) from the server alone."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    spec = JobSpec.from_payload(data)
    refuse_server_labels(spec.labels)
    return replace(
        spec,
        name=spec.name.strip() or name_for(spec.command),
        provider=spec.provider.strip(),
        secret_names=tuple(sorted(secret_names)),
        begin_at=canonical_time(spec.begin_at),
        tolerations=canonical_tolerations(spec.tolerations),
        retry_on=canonical_retry_on(spec.retry_on),
    )


def spec_to_proto(spec: JobSpec) -> common_pb2.JobSpec:
    return ParseDict(spec.to_payload(), common_pb2.JobSpec())


_TIMESTAMP = "google.protobuf.Timestamp"
_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def message_dict(message: Message) -> dict[str, Any]:
    """Every field present: unset message fields (times not reached yet) as None."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _fill(message, data)
    return data


def _fill(message: Message, data: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        kind = field.message_type
        if kind is None and field.has_presence and not message.HasField(field.name):
            data[field.name] = None  # an `optional` number not known
            continue
        if field.type in _INT64_TYPES:  # proto3's JSON mapping writes them as strings
            value = data[field.name]
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
            continue
        if kind is not None and kind.GetOptions().map_entry:
            if kind.fields_by_name["value"].type in _INT64_TYPES:
                data[field.name] = {key: int(value) for key, value in data[field.name].items()}
            continue
        if kind is None:
            continue
        value = getattr(message, field.name)
        if not field.is_repeated and not message.HasField(field.name):
            data[field.name] = None
        elif kind.full_name == _TIMESTAMP:
            continue  # a string already
        elif field.is_repeated:
            for item, item_data in zip(value, data[field.name], strict=True):
                _fill(item, item_data)
        else:
            _fill(value, data[field.name])


def job_dict(job: common_pb2.Job) -> dict[str, Any]:
    """A job in JSON: every field present; no exit code is null, not 0."""
    data = message_dict(job)
    data["exit_code"] = job.exit_code if job.has_exit_code else None
    data.pop("has_exit_code", None)
    return data


def workflow_dict(workflow: jobs_pb2.Workflow) -> dict[str, Any]:
    data = message_dict(workflow)
    for entry, shown in zip(workflow.jobs, data["jobs"], strict=True):
        shown["job"] = job_dict(entry.job)
    return data


def after_names(workflow: jobs_pb2.Workflow) -> dict[str, str]:
    """The name of each job of the pipeline by id, those its standing jobs copy too: what a
    job starts after is said by name (a job outside the pipeline, by its id's start)."""
    return {job_id: entry.job.spec.name for entry in workflow.jobs for job_id in (entry.job.id, *entry.copy_of)}


def after_text(job: common_pb2.Job, names: dict[str, str]) -> str:
    """``build:ok, test:any``: as ``--after`` and a file's ``after`` write it."""
    return ", ".join(sorted(f"{names.get(ref, ref[:8])}:{condition}" for ref, condition in job.spec.after.items()))


def workflow_state_text(entry: jobs_pb2.WorkflowJob) -> str:
    if entry.skipped:
        return f"{entry.job.state} (skipped)"
    return f"{entry.job.state} (held)" if entry.job.held_by else entry.job.state


def not_succeeded(workflow: jobs_pb2.Workflow) -> list[common_pb2.Job]:
    """What ``job retry --workflow`` runs again: the jobs standing in it that did not succeed."""
    return [entry.job for entry in workflow.jobs if entry.job.state != JobState.SUCCEEDED]


def exec_dict(ran: jobs_pb2.ExecJobResponse) -> dict[str, Any]:
    """`job exec -o json`: the command's end, and what it printed as text (bytes that are
    not UTF-8 as U+FFFD)."""
    return {
        "index": ran.index,
        "exit_code": ran.exit_code,
        "message": ran.message,
        "stdout": ran.stdout.decode(errors="replace"),
        "stderr": ran.stderr.decode(errors="replace"),
        "stdout_bytes": ran.stdout_bytes,
        "stderr_bytes": ran.stderr_bytes,
    }


def using_text(now: jobs_pb2.JobUsageNow) -> str:
    """What a running job uses now, as its worker's last heartbeat said: ``0.83 CPU, 120.4
    MiB memory (3 s ago)``; '' when it said nothing."""
    if not now.HasField("sampled_at"):
        return ""
    parts = [f"{now.cpu_cores:.2f} CPU"] if now.HasField("cpu_cores") else []
    if now.HasField("memory_bytes"):
        parts.append(f"{size_text(now.memory_bytes)} memory")
    return f"{', '.join(parts)} ({said_ago(now)})" if parts else ""


def said_ago(now: jobs_pb2.JobUsageNow) -> str:
    """How long ago its worker said what the job uses: ``3 s ago``; ``-`` when it did not."""
    if not now.HasField("sampled_at"):
        return "-"
    return f"{max(0.0, time.time() - now.sampled_at.ToDatetime(UTC).timestamp()):.0f} s ago"
