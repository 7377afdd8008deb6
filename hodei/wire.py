"""The job spec on the wire: ``hodei.jobs.JobSpec`` to and from the domain's ``JobSpec``
(same field names), for the server and the CLI alike; and the most a listing returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from google.protobuf.json_format import MessageToDict, ParseDict

from hodei._proto import common_pb2
from hodei.domain.spec import JobSpec, canonical_time, name_for

# GetQueueStatus lists at most this many queued jobs: `job get` and `job run --wait` look
# for a job's place among them.
MAX_QUEUE_LISTED = 1000
# ListJobs answers at most this many jobs a call: a longer list is read page by page.
MAX_JOBS_LISTED = 1000


def spec_from_proto(message: common_pb2.JobSpec, secret_names: Iterable[str] = ()) -> JobSpec:
    """The request's spec; a job without a name is named after its command. The secret
    names come from the request's secrets, never from the client's spec."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    spec = JobSpec.from_payload(data)
    return replace(
        spec,
        name=spec.name.strip() or name_for(spec.command),
        provider=spec.provider.strip(),
        secret_names=tuple(sorted(secret_names)),
        begin_at=canonical_time(spec.begin_at),
    )


def spec_to_proto(spec: JobSpec) -> common_pb2.JobSpec:
    return ParseDict(spec.to_payload(), common_pb2.JobSpec())
