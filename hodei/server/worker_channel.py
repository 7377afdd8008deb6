"""hodei.jobs.WorkerAgentService: where worker agents register and run their job.

A worker exchanges its single-use token for a session (``Register``), then opens
``Connect`` with that session in its metadata: the stream is bound to the worker's
identity at open, and every message on it may only concern that worker's own job.

The server sends run-job when the execution saga has dispatched the job to the worker
(worker BUSY, job ASSIGNED), and cancel when the job was cancelled while the worker
holds it. Both decisions are read from the database, so it does not matter which
server process dispatched the job: a NOTIFY wakes the stream, and it also polls.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from uuid import UUID

import grpc

from hodei._proto import worker_pb2, worker_pb2_grpc
from hodei.domain.job import Job, JobState
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker, WorkerState
from hodei.errors import InvalidInput, InvalidTransition, StoreUnavailable, Unauthenticated
from hodei.faults import Faults
from hodei.liveness import Liveness
from hodei.logs import STDERR, STDOUT, LogLine, LogStore
from hodei.server.edge import rpc
from hodei.signals import Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import translate_errors
from hodei.store.job_secrets import JobSecrets, SecretsPurged
from hodei.store.sql import query
from hodei.tokens import TokenSigner, new_nonce

log = logging.getLogger(__name__)

# Seconds between re-reads of the worker's state when no NOTIFY arrives.
STATE_POLL = 1.0

_RESULTS = {
    worker_pb2.JOB_OUTCOME_TIMED_OUT: JobState.TIMEOUT,
    worker_pb2.JOB_OUTCOME_CANCELLED: JobState.CANCELLED,
    worker_pb2.JOB_OUTCOME_START_FAILED: JobState.FAILED,
    worker_pb2.JOB_OUTCOME_WORKER_STOPPED: JobState.FAILED,
}


def outcome_state(result: worker_pb2.JobResult) -> JobState:
    if result.outcome == worker_pb2.JOB_OUTCOME_EXITED:
        return JobState.SUCCEEDED if result.exit_code == 0 else JobState.FAILED
    try:
        return _RESULTS[result.outcome]
    except KeyError:
        raise InvalidInput(f"unknown job outcome {result.outcome}") from None


class LogSequences:
    """The last log batch written per job, so a batch re-sent after a reconnect is
    acknowledged without being written twice. A cache: after a restart, at most the
    one batch in flight may repeat."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, job_id: str, seq: int) -> bool:
        with self._lock:
            if seq <= self._last.get(job_id, 0):
                return False
            self._last[job_id] = seq
            return True

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._last.pop(job_id, None)


class WorkerAgentService(worker_pb2_grpc.WorkerAgentServiceServicer):
    def __init__(
        self,
        store: HodeiStore,
        signer: TokenSigner,
        signals: Signals,
        logs: LogStore,
        liveness: Liveness,
        secrets: JobSecrets,
        heartbeat_interval: float,
        faults: Faults,
    ) -> None:
        self.store = store
        self.signer = signer
        self.signals = signals
        self.logs = logs
        self.liveness = liveness
        self.secrets = secrets
        self.heartbeat_interval = heartbeat_interval
        self.faults = faults
        self.sequences = LogSequences()
        self.connected: set[UUID] = set()

    @rpc
    def Register(
        self, request: worker_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> worker_pb2.RegisterResponse:
        worker = self.store.find(Worker, request.worker_id)
        if worker is None or worker.job_id != request.job_id:
            raise Unauthenticated(f"no worker {request.worker_id} for job {request.job_id}")
        self.signer.check_registration(request.token, str(worker.id), worker.job_id, worker.token_nonce)
        offered = new_nonce()

        def register() -> tuple[str, list[Worker]]:
            current = self.store.load(Worker, worker.id)
            return current.register(offered, request.hostname[:255], datetime.now(UTC)), [current]

        meta = Meta(actor=f"worker:{worker.id}", correlation_id=worker.job_id)
        session_nonce = self.store.command(meta, register)
        self.faults.point("register-committed")
        self.liveness.touch(worker.id, connected=False)
        log.info("worker %s registered for job %s", worker.id, worker.job_id)
        return worker_pb2.RegisterResponse(
            session_token=self.signer.session_token(str(worker.id), session_nonce),
            heartbeat_interval_ms=int(self.heartbeat_interval * 1000),
        )

    @rpc
    def Connect(
        self, request_iterator: Iterable[worker_pb2.WorkerMessage], context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.ServerMessage]:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        worker_id = metadata.get("x-hodei-worker-id", "")
        worker = self.store.find(Worker, worker_id)
        if worker is None:
            raise Unauthenticated(f"no worker {worker_id}")
        self.signer.check_session(metadata.get("x-hodei-session", ""), str(worker.id), worker.session_nonce)
        if not worker.is_live:
            raise Unauthenticated(f"worker {worker.id} is {worker.state}: its session is over")
        session = WorkerSession(self, worker)
        yield from session.run(request_iterator, context)


class WorkerSession:
    """One open stream of one worker."""

    def __init__(self, service: WorkerAgentService, worker: Worker) -> None:
        self.service = service
        self.worker_id = worker.id
        self.job_id = worker.job_id
        self.meta = Meta(actor=f"worker:{worker.id}", correlation_id=worker.job_id)
        self.outgoing: queue.Queue[worker_pb2.ServerMessage] = queue.Queue()
        self.closed = threading.Event()
        self.sent_run = False
        self.sent_cancel = False
        self.last_touch = 0.0
        self.wake: Callable[[], None] = lambda: None

    def run(
        self, requests: Iterable[worker_pb2.WorkerMessage], context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.ServerMessage]:
        service = self.service
        service.connected.add(self.worker_id)
        service.liveness.touch(self.worker_id, connected=True)
        reader = threading.Thread(target=self._read, args=(requests,), name=f"worker-{self.worker_id}", daemon=True)
        with service.signals.waiter(str(self.worker_id), self.job_id) as waiter:
            self.wake = waiter.wake
            reader.start()
            try:
                while context.is_active() and not self.closed.is_set():
                    if not self._sync():
                        return
                    while True:
                        try:
                            yield self.outgoing.get_nowait()
                        except queue.Empty:
                            break
                    waiter.wait(STATE_POLL)
            finally:
                self.closed.set()
                service.connected.discard(self.worker_id)
                self._disconnected()

    def _send(self, message: worker_pb2.ServerMessage) -> None:
        self.outgoing.put(message)
        self.wake()

    def _sync(self) -> bool:
        """Sends run-job or cancel when the database says so. False ends the stream."""
        with translate_errors(), self.service.store.pool.connection() as conn:
            row = conn.execute(query("worker_session_state"), (self.worker_id,)).fetchone()
        if row is None:
            return False
        worker_state, _, worker_attempt, job_state, job_attempt, spec, error = row
        if worker_state in (WorkerState.TERMINATING, WorkerState.TERMINATED):
            return False
        same_attempt = worker_attempt == job_attempt
        if worker_state == WorkerState.BUSY and job_state == JobState.ASSIGNED and same_attempt and not self.sent_run:
            self.sent_run = True
            self._send_run(JobSpec.from_payload(spec))
        if job_state == JobState.CANCELLED and worker_state == WorkerState.BUSY and not self.sent_cancel:
            self.sent_cancel = True
            self._send(worker_pb2.ServerMessage(cancel=worker_pb2.CancelJob(job_id=self.job_id, reason=error or "")))
        return True

    def _send_run(self, spec: JobSpec) -> None:
        try:
            secrets = self.service.secrets.open(UUID(self.job_id))
        except SecretsPurged as exc:
            reason = exc.message
            self._update_job(lambda job: job.fail(reason))
            return
        self._send(
            worker_pb2.ServerMessage(
                run_job=worker_pb2.RunJob(
                    job_id=self.job_id,
                    command=spec.command,
                    args=spec.args,
                    env=spec.env,
                    working_dir=spec.working_dir,
                    timeout_ms=int(spec.timeout_seconds * 1000),
                    secrets=secrets,
                )
            )
        )

    def _read(self, requests: Iterable[worker_pb2.WorkerMessage]) -> None:
        try:
            for message in requests:
                self._handle(message)
        except grpc.RpcError:
            pass
        except Exception:
            log.exception("worker %s stream failed", self.worker_id)
        finally:
            self.closed.set()
            self.wake()

    def _handle(self, message: worker_pb2.WorkerMessage) -> None:
        # Any message proves the worker alive; record it at most twice per interval. While
        # the database is away the stream goes on: the sweeper does not count that time.
        now = time.monotonic()
        if now - self.last_touch > self.service.heartbeat_interval / 2:
            self.last_touch = now
            try:
                self.service.liveness.touch(self.worker_id, connected=True)
            except StoreUnavailable as exc:
                log.warning("could not record worker %s's heartbeat: %s", self.worker_id, exc)
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            self._send(worker_pb2.ServerMessage(heartbeat_ack=worker_pb2.HeartbeatAck()))
        elif kind == "ack":
            self._own(message.ack.job_id)
            self._update_job(lambda job: job.accept(str(self.worker_id)))
        elif kind == "log_batch":
            self._write_logs(message.log_batch)
        elif kind == "result":
            result = message.result
            self._own(result.job_id)
            state = outcome_state(result)
            exit_code = None if result.outcome == worker_pb2.JOB_OUTCOME_CANCELLED else result.exit_code
            reason = None if state is JobState.SUCCEEDED else result.message or state.value.lower()
            ran = None
            if result.HasField("started_at") and result.HasField("finished_at"):
                ran = (
                    result.started_at.ToDatetime(tzinfo=UTC).isoformat(),
                    result.finished_at.ToDatetime(tzinfo=UTC).isoformat(),
                )
            self._update_job(lambda job: job.finish(str(self.worker_id), state, exit_code, reason, ran))
            self.service.sequences.forget(self.job_id)
            self.service.logs.forget(self.job_id)
            self._send(worker_pb2.ServerMessage(result_ack=worker_pb2.ResultAck(job_id=self.job_id)))

    def _own(self, job_id: str) -> None:
        if job_id != self.job_id:
            raise Unauthenticated(f"worker {self.worker_id} may only report on job {self.job_id}, not {job_id}")

    def _update_job(self, change: Callable[[Job], None]) -> None:
        def run() -> tuple[None, list[Job]]:
            job = self.service.store.load(Job, self.job_id)
            try:
                change(job)
            except InvalidTransition as exc:
                log.warning("worker %s: %s", self.worker_id, exc)
            return None, [job]

        self.service.store.command(self.meta, run)

    def _write_logs(self, batch: worker_pb2.LogBatch) -> None:
        self._own(batch.job_id)
        if self.service.sequences.claim(self.job_id, batch.seq):
            lines = [
                LogLine(
                    line.timestamp.ToDatetime(tzinfo=UTC),
                    STDERR if line.stream == worker_pb2.LOG_STREAM_STDERR else STDOUT,
                    line.line,
                    line.partial,
                )
                for line in batch.lines
            ]
            self.service.logs.append(self.job_id, lines)
            self.service.signals.publish(f"log:{self.job_id}")
        self._send(worker_pb2.ServerMessage(log_ack=worker_pb2.LogAck(seq=batch.seq)))

    def _disconnected(self) -> None:
        try:
            self.service.liveness.touch(self.worker_id, connected=False)
        except Exception as exc:
            log.warning("could not record that worker %s disconnected: %s", self.worker_id, exc)
