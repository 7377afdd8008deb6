"""hodei.jobs.LogStreamService: a job's stored output, and live lines while it runs.

Followers tail the job's log file: the server that receives a batch wakes local
followers at once, and every follower also re-reads the file twice a second, so a
follower connected to another server process sees the lines too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from hodei._proto import logs_pb2, logs_pb2_grpc, worker_pb2
from hodei.domain.job import JobState
from hodei.domain.worker import LIVE_STATES, WorkerState
from hodei.errors import InvalidInput, NoSuchAttempt, StoreUnavailable
from hodei.logs import STDERR, Cursor, LogEntry, LogStore, file_size
from hodei.server.access import caller
from hodei.server.edge import STREAMS, rpc
from hodei.signals import Signals
from hodei.store.readmodels import JobRow, ReadModels

FOLLOW_POLL = 0.5
FOLLOW_POLL_IDLE = 2.0
# Seconds between reads of a followed job's state while nothing wakes its follower.
STATE_CHECK = 5.0
# How old a read of a job's state may be to serve another follower's periodic check.
STATE_SHARED = 1.0
# How long a follower waits for that read before it streams what the file has meanwhile.
STATE_PATIENCE = 1.0
PAGE_DEFAULT = 10_000
PAGE_MAX = 100_000
# What a stream reads at once: little held in memory per follower.
PAGE_STREAMED = 1_000
# A page's text stays under gRPC's default 4 MiB message limit, whatever the lines' length.
PAGE_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class _Page:
    entries: logs_pb2.JobLogEntries
    next: Cursor
    more: bool


def _entry(job_id: str, entry: LogEntry) -> logs_pb2.JobLogEntry:
    message = logs_pb2.JobLogEntry(
        job_id=job_id,
        line_number=entry.number,
        stream=worker_pb2.LOG_STREAM_STDERR if entry.stream == STDERR else worker_pb2.LOG_STREAM_STDOUT,
        line=entry.text,
        partial=entry.partial,
        attempt=entry.attempt,
    )
    message.timestamp.FromMilliseconds(entry.at_ms)
    return message


def _wanted(job: JobRow, request: logs_pb2.GetLogsRequest | logs_pb2.SubscribeLogsRequest) -> str:
    """The job's id, once the request asks for a part of its log there can be: lines from
    1, an attempt (0: every attempt) the job has begun, or a tail of the whole log."""
    if request.from_line < 0 or request.tail < 0:
        raise InvalidInput("from_line and tail must not be negative")
    if request.HasField("tail") and request.attempt:
        raise InvalidInput("ask for the tail of the whole log or for one attempt's output, not both")
    if not 0 <= request.attempt <= job.attempt:
        raise NoSuchAttempt(job.id, job.attempt, request.attempt)
    if request.HasField("since") and request.since.ToDatetime(tzinfo=UTC) > datetime.now(UTC):
        raise InvalidInput(f"since {request.since.ToJsonString()} is in the future")
    return str(job.id)


class _JobEnds:
    """Whether followed jobs have ended, one read shared by all followers of a job.

    500 followers of one job cost one query per check, not 500: a follower takes the
    newest read begun after the moment it needs (its wake-up, or a second ago), joining
    it while it runs.
    """

    def __init__(self, reads: ReadModels) -> None:
        self._reads = reads
        self._latest: dict[str, tuple[float, asyncio.Future[tuple[bool, int]]]] = {}
        self._followers: Counter[str] = Counter()

    @contextlib.contextmanager
    def following(self, job_id: str) -> Iterator[None]:
        self._followers[job_id] += 1
        try:
            yield
        finally:
            self._followers[job_id] -= 1
            if not self._followers[job_id]:
                del self._followers[job_id]
                self._latest.pop(job_id, None)

    async def ended(self, job_id: str, since: float, attempt: int = 0) -> bool:
        """Whether the job's output has ended, or ``attempt``'s (a later one began)."""
        latest = self._latest.get(job_id)
        if latest is None or latest[0] < since:
            latest = (time.monotonic(), asyncio.ensure_future(asyncio.to_thread(self._read, job_id)))
            self._latest[job_id] = latest
        try:
            over, current = await asyncio.shield(latest[1])
        except StoreUnavailable:
            if self._latest.get(job_id) is latest:
                del self._latest[job_id]  # the next need reads again, rather than this failure
            raise
        return over or 0 < attempt < current

    def _read(self, job_id: str) -> tuple[bool, int]:
        """Ended, and its log complete (a cancelled job's processes may still print while
        they stop: its worker is kept for them, until its log is stored or its worker gone);
        and the job's attempt."""
        job = self._reads.job(job_id)
        state = JobState(job.state)
        if state is not JobState.CANCELLED or job.storage_uri is not None or job.worker_id is None:
            return state.is_terminal, job.attempt
        workers = self._reads.workers_of_job(job.id)
        return not any(WorkerState(worker.state) in LIVE_STATES for worker in workers), job.attempt


class LogStreamService(logs_pb2_grpc.LogStreamServiceServicer):
    def __init__(self, reads: ReadModels, logs: LogStore, signals: Signals) -> None:
        self.reads = reads
        self.logs = logs
        self.signals = signals
        self._ends = _JobEnds(reads)

    @rpc
    def GetLogs(self, request: logs_pb2.GetLogsRequest, context: grpc.ServicerContext) -> logs_pb2.GetLogsResponse:
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        job_id = _wanted(self.reads.job(request.job_id), request)
        try:
            cursor = Cursor.parse(request.page_token) if request.page_token else None
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        limit = min(request.limit or PAGE_DEFAULT, PAGE_MAX)
        # A page token says where; otherwise the request, and for a tail where to read from.
        from_line, cursor = self._first_line(job_id, request) if cursor is None else (1, cursor)
        page = self.logs.read(job_id, from_line, limit, cursor, PAGE_BYTES, request.attempt or None)
        return logs_pb2.GetLogsResponse(
            entries=[_entry(job_id, e) for e in page.entries],
            has_more=page.more,
            next_page_token=page.next.token(),
        )

    def _first_line(
        self, job_id: str, request: logs_pb2.GetLogsRequest | logs_pb2.SubscribeLogsRequest
    ) -> tuple[int, Cursor | None]:
        """``from_line``, or where the last ``tail`` lines written so far begin, or the
        first line read at or after ``since``: the latest of them; and for a tail, where
        reading reaches it from (its log's last batches, not its first line)."""
        first, cursor = max(request.from_line, 1), None
        if request.HasField("tail"):
            last, cursor = self.logs.tail(job_id, request.tail)  # at or before every line after
            first = max(first, last)
        if request.HasField("since"):
            first = max(first, self.logs.first_line_at(job_id, request.since.ToMilliseconds()))
        return first, cursor

    def _page(self, job_id: str, from_line: int, cursor: Cursor | None, attempt: int | None) -> _Page:
        """A page read and turned into one message, in an I/O thread."""
        page = self.logs.read(job_id, from_line, PAGE_STREAMED, cursor, PAGE_BYTES, attempt)
        entries = logs_pb2.JobLogEntries(entries=[_entry(job_id, entry) for entry in page.entries])
        return _Page(entries, page.next, page.more)

    @rpc
    async def SubscribeLogs(
        self, request: logs_pb2.SubscribeLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[logs_pb2.JobLogEntries]:
        """A task, not a thread, per follower: hundreds of them cost no thread each."""
        job_id = _wanted(await asyncio.to_thread(self.reads.job, request.job_id), request)
        from_line, cursor = await asyncio.to_thread(self._first_line, job_id, request)
        path = self.logs.path(job_id)
        with (
            STREAMS.serving(caller(), lasting=request.follow),
            self.signals.async_waiter(f"log:{job_id}", job_id) as waiter,
            self._ends.following(job_id),
        ):
            if request.HasField("tail") or request.HasField("since"):
                yield logs_pb2.JobLogEntries(from_line=from_line)  # where to come back to
            ended, checked, poll = False, 0.0, FOLLOW_POLL
            need_since: float | None = time.monotonic()
            while True:
                grown = file_size(path) > (cursor.offset if cursor else 0)
                # The job's state is read once the file stopped growing, after a wake-up
                # (a NOTIFY of the job's events reaches every server) or now and then: an
                # idle follower costs a stat() per poll, and a share of one query.
                if not grown and need_since is None and time.monotonic() - checked > STATE_CHECK:
                    need_since = time.monotonic() - STATE_SHARED
                if not grown and need_since is not None:
                    try:
                        ended = await asyncio.wait_for(
                            self._ends.ended(job_id, need_since, request.attempt), STATE_PATIENCE
                        )
                        checked, need_since = time.monotonic(), None
                    except (StoreUnavailable, TimeoutError):
                        # PostgreSQL is away (or slow): the lines still come from the file.
                        # The read goes on, shared; this follower asks for it again next poll.
                        pass
                # The job's end is read before the file, so lines written before it ended are all sent.
                more = grown or ended or cursor is None
                while more:
                    page = await asyncio.to_thread(self._page, job_id, from_line, cursor, request.attempt or None)
                    if page.entries.entries:
                        yield page.entries
                    cursor, more = page.next, page.more
                if not request.follow or ended:
                    return
                # Idle, it looks less and less often (this server's writes wake it at once),
                # at jittered times: followers opened together do not all wake together.
                poll = FOLLOW_POLL if grown else min(poll * 2, FOLLOW_POLL_IDLE)
                if await waiter.wait_async(poll * random.uniform(0.75, 1.25)) and need_since is None:
                    need_since = waiter.woken_at  # an unserved earlier need already covers it
