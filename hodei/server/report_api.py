"""hodei.jobs.ReportService: what ended jobs used, by a grouping (``hodei.report``)."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from psycopg_pool import ConnectionPool

from hodei._proto import report_pb2, report_pb2_grpc
from hodei.report import Grouping, UsageGroup, report, window
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.server.jobs_api import job_filters


class ReportService(report_pb2_grpc.ReportServiceServicer):
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @rpc
    def ReportJobs(self, request: report_pb2.ReportJobsRequest, context: grpc.ServicerContext) -> report_pb2.JobsReport:
        grouping = Grouping.of(request.by)
        since, until = window(
            request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None,
            request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else None,
            datetime.now(UTC),
        )
        found = report(self.pool, grouping, since, until, job_filters(request))
        return report_pb2.JobsReport(
            since=timestamp(since),
            until=timestamp(until),
            by=grouping.text,
            groups=[_group(group) for group in found.groups],
            total=_group(found.total),
            groups_left_out=found.left_out,
        )


def _group(group: UsageGroup) -> report_pb2.UsageGroup:
    return report_pb2.UsageGroup(
        key=group.key or "",
        none=group.key is None and not group.total,
        jobs=group.jobs,
        succeeded=group.succeeded,
        failed=group.failed,
        cancelled=group.cancelled,
        timed_out=group.timed_out,
        attempts=group.attempts,
        run_seconds=group.run_seconds,
        cpu_seconds=group.cpu_seconds,
        jobs_measured=group.jobs_measured,
        cpu_asked_seconds=group.cpu_asked_seconds,
        cpu_efficiency=group.cpu_efficiency,
        peak_memory_bytes=group.peak_memory_bytes,
        wait_p50_seconds=group.wait_p50_seconds,
    )
