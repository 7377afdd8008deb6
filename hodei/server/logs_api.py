"""hodei.jobs.LogStreamService: a job's stored output, and live lines while it runs.

Followers tail the job's log file: the server that receives a batch wakes local
followers at once, and every follower also re-reads the file twice a second, so a
follower connected to another server process sees the lines too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hodei._proto import logs_pb2, logs_pb2_grpc, worker_pb2
from hodei.domain.job import JobState
from hodei.errors import InvalidInput
from hodei.logs import STDERR, Cursor, LogEntry, LogStore
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.signals import Signals
from hodei.store.readmodels import ReadModels

FOLLOW_POLL = 0.5
PAGE_DEFAULT = 10_000
PAGE_MAX = 100_000
# What a stream reads at once: little held in memory per follower.
PAGE_STREAMED = 1_000


def _entry(job_id: str, entry: LogEntry) -> logs_pb2.JobLogEntry:
    return logs_pb2.JobLogEntry(
        job_id=job_id,
        line_number=entry.number,
        stream=worker_pb2.LOG_STREAM_STDERR if entry.stream == STDERR else worker_pb2.LOG_STREAM_STDOUT,
        line=entry.text,
        timestamp=timestamp(entry.timestamp),
        partial=entry.partial,
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
        try:
            cursor = Cursor.parse(request.page_token) if request.page_token else None
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        limit = min(request.limit or PAGE_DEFAULT, PAGE_MAX)
        page = self.logs.read(job_id, max(request.from_line, 1), limit, cursor)
        return logs_pb2.GetLogsResponse(
            entries=[_entry(job_id, e) for e in page.entries],
            has_more=page.more,
            next_page_token=page.next.token(),
        )

    @rpc
    async def SubscribeLogs(
        self, request: logs_pb2.SubscribeLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[logs_pb2.JobLogEntry]:
        """A task, not a thread, per follower: hundreds of them cost no thread each."""
        if request.from_line < 0:
            raise InvalidInput("from_line must not be negative")
        job_id = str((await asyncio.to_thread(self.reads.job, request.job_id)).id)
        from_line, cursor = max(request.from_line, 1), None
        with self.signals.async_waiter(f"log:{job_id}", job_id) as waiter:
            while True:
                ended = JobState((await asyncio.to_thread(self.reads.job, job_id)).state).is_terminal
                # A page at a time, from where the last one ended: never the whole log at once.
                more = True
                while more:
                    page = await asyncio.to_thread(self.logs.read, job_id, from_line, PAGE_STREAMED, cursor)
                    for entry in page.entries:
                        yield _entry(job_id, entry)
                    cursor, more = page.next, page.more
                # The job's end is read before the file, so lines written before it ended are all sent.
                if not request.follow or ended:
                    return
                await waiter.wait_async(FOLLOW_POLL)
