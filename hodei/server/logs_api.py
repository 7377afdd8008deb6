"""hodei.jobs.LogStreamService: a job's stored output, and live lines while it runs.

Followers tail the job's log file: the server that receives a batch wakes local
followers at once, and every follower also re-reads the file twice a second, so a
follower connected to another server process sees the lines too.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from hodei._proto import logs_pb2, logs_pb2_grpc, worker_pb2
from hodei.domain.job import JobState
from hodei.errors import InvalidInput
from hodei.logs import STDERR, LogEntry, LogStore
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.signals import Signals
from hodei.store.readmodels import ReadModels

FOLLOW_POLL = 0.5


def _entry(job_id: str, entry: LogEntry) -> logs_pb2.JobLogEntry:
    return logs_pb2.JobLogEntry(
        job_id=job_id,
        line_number=entry.number,
        stream=worker_pb2.LOG_STREAM_STDERR if entry.stream == STDERR else worker_pb2.LOG_STREAM_STDOUT,
        line=entry.text,
        timestamp=timestamp(entry.timestamp),
    )


class LogStreamService(logs_pb2_grpc.LogStreamServiceServicer):
    def __init__(self, reads: ReadModels, logs: LogStore, signals: Signals) -> None:
        self.reads = reads
        self.logs = logs
        self.signals = signals

    @rpc
    def GetLogs(self, request: logs_pb2.GetLogsRequest, context: grpc.ServicerContext) -> logs_pb2.GetLogsResponse:
        if request.limit < 0 or request.from_line < 0:
            raise InvalidInput("limit and from_line must not be negative")
        job_id = str(self.reads.job(request.job_id).id)
        start = max(request.from_line, 1)
        wanted = request.limit or None
        entries = list(self.logs.read(job_id, start, None if wanted is None else wanted + 1))
        has_more = wanted is not None and len(entries) > wanted
        return logs_pb2.GetLogsResponse(entries=[_entry(job_id, e) for e in entries[:wanted]], has_more=has_more)

    @rpc
    def SubscribeLogs(
        self, request: logs_pb2.SubscribeLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[logs_pb2.JobLogEntry]:
        if request.from_line < 0:
            raise InvalidInput("from_line must not be negative")
        job_id = str(self.reads.job(request.job_id).id)
        next_line = max(request.from_line, 1)
        with self.signals.waiter(f"log:{job_id}", job_id) as waiter:
            while context.is_active():
                ended = JobState(self.reads.job(job_id).state).is_terminal
                for entry in self.logs.read(job_id, next_line):
                    next_line = entry.number + 1
                    yield _entry(job_id, entry)
                # The job's end is read before the file, so lines written before it ended are all sent.
                if not request.follow or ended:
                    return
                waiter.wait(FOLLOW_POLL)
