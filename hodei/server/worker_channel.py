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

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC
from typing import Any
from uuid import UUID

import grpc

from hodei._proto import artifacts_pb2, worker_pb2, worker_pb2_grpc
from hodei.artifacts import ArtifactRefused, ArtifactStore, Stored, Upload
from hodei.domain.job import Job, JobState, outputs_bytes, outputs_problem
from hodei.domain.provider import ProviderType
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker, WorkerState
from hodei.errors import (
    InvalidInput,
    InvalidTransition,
    PermissionDenied,
    ProviderUnavailable,
    StoreUnavailable,
    Unauthenticated,
)
from hodei.execs import ExecResults
from hodei.faults import Faults
from hodei.inputs import INPUT_NAME, read_input
from hodei.liveness import Liveness, Pace, Usage
from hodei.logfields import about
from hodei.logs import STDERR, STDOUT, LogLine, LogNotStored, LogStore
from hodei.metrics import PlatformMetrics
from hodei.providers.registry import ProviderRegistry
from hodei.sagas.engine import SagaEngine
from hodei.sagas.routes import only_pokes
from hodei.server.artifacts_api import artifact_message, artifact_pieces, described_pieces, received
from hodei.server.edge import STREAMS, rpc
from hodei.signals import AsyncWaiter, Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_transaction, fetch_all, fetch_one
from hodei.store.job_secrets import JobSecrets, SecretsPurged
from hodei.tokens import TokenSigner, new_nonce

log = logging.getLogger(__name__)
# The most a RunJob carries of the outputs of the jobs it starts after (an --after-array
# of 1,000 jobs at 64 KiB each would be past any message gRPC takes).
MOST_AFTER_OUTPUT_BYTES = 1024 * 1024

# Seconds between re-reads of the connected workers' states, all in one query. Only a
# guard: a stream wakes on every NOTIFY about its worker or job, and the listener wakes
# every stream after it reconnects. A query per stream cost, with 1,000 sim workers, a
# whole core when each polled every second, and still 4% of one every 30 s.
STATE_POLL = 30.0

# How much slower than its current pace a worker's pace must have become for the server
# to tell it (an answer to its heartbeat): a stream's pace moves in a few steps while its
# server's workers grow, and ends within a quarter of the server's heartbeat budget.
REPACE = 1.25

_RESULTS = {
    worker_pb2.JOB_OUTCOME_TIMED_OUT: JobState.TIMEOUT,
    worker_pb2.JOB_OUTCOME_CANCELLED: JobState.CANCELLED,
    worker_pb2.JOB_OUTCOME_START_FAILED: JobState.FAILED,
    worker_pb2.JOB_OUTCOME_WORKER_STOPPED: JobState.FAILED,
}


@dataclass(frozen=True)
class SessionState:
    """What a worker's stream reads to decide whether to send run-job, cancel or signals."""

    worker_id: UUID
    worker_state: str
    worker_attempt: int
    job_state: str
    job_attempt: int
    spec: dict[str, Any]
    error_message: str | None
    # The job's signals, each [attempt, name] (`job signal`).
    signals: list[list[Any]]
    # The commands run beside its own (`job exec`), each {index, attempt, argv, …}; an
    # ended one has its exit_code.
    execs: list[dict[str, Any]]


def outcome_state(result: worker_pb2.JobResult) -> JobState:
    if result.outcome == worker_pb2.JOB_OUTCOME_EXITED:
        return JobState.SUCCEEDED if result.exit_code == 0 else JobState.FAILED
    try:
        return _RESULTS[result.outcome]
    except KeyError:
        raise InvalidInput(f"unknown job outcome {result.outcome}") from None


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """A worker's call's metadata: its id and session (``x-hodei-worker-id``, ``x-hodei-session``)."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


def worker_actor(worker_id: UUID | str) -> str:
    """Who a worker's writes are by (``actor``): its registration, acceptance, result."""
    return f"worker:{worker_id}"


def _input(spec: JobSpec) -> artifacts_pb2.Artifact:
    """The job's files (--input) as its worker fetches them: its own job's, attempt 0."""
    return artifacts_pb2.Artifact(name=INPUT_NAME, size_bytes=spec.input_bytes, sha256=spec.input_sha256, attempt=0)


def _ended(row: SessionState) -> bool:
    """The worker's session is over: the stream ends."""
    return row.worker_state in (WorkerState.TERMINATING, WorkerState.TERMINATED)


class WorkerAgentService(worker_pb2_grpc.WorkerAgentServiceServicer):
    def __init__(
        self,
        store: HodeiStore,
        signer: TokenSigner,
        signals: Signals,
        logs: LogStore,
        liveness: Liveness,
        secrets: JobSecrets,
        pace: Pace,
        faults: Faults,
        registry: ProviderRegistry,
        metrics: PlatformMetrics,
        engine: SagaEngine,
        artifacts: ArtifactStore,
        address: str = "",
    ) -> None:
        """``address``: where the jobs it hands over reach this server (`--api-token`'s
        HODEI_SERVER): the address its workers dial."""
        self.address = address
        self.artifacts = artifacts
        self.exec_results = ExecResults(artifacts)
        self.registry = registry
        self.engine = engine
        self.metrics = metrics
        metrics.count_connected(lambda: len(self.sessions))
        self.store = store
        self.signer = signer
        self.signals = signals
        self.logs = logs
        self.liveness = liveness
        self.secrets = secrets
        self.pace = pace
        self.faults = faults
        # The open stream of each connected worker (a reconnect replaces the entry).
        self.sessions: dict[UUID, WorkerSession] = {}
        self._poller: asyncio.Task[None] | None = None

    def stopped_by_others(self, provider_type: str, worker_id: str) -> str | None:
        try:
            provider = self.registry.get(ProviderType(provider_type))
        except (ValueError, ProviderUnavailable):
            return None
        return provider.stopped_by_others(worker_id)

    @rpc
    def Register(
        self, request: worker_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> worker_pb2.RegisterResponse:
        try:
            worker_id = UUID(request.worker_id)
        except ValueError:
            raise Unauthenticated(f"no worker {request.worker_id} for job {request.job_id}") from None
        offered = new_nonce()
        interval, timeout = self.pace.for_workers(len(self.sessions))

        def register() -> tuple[tuple[Worker, str], list[Worker]]:
            # Checked in the command: the worker is in hand with its job's flow. Its
            # liveness record is written in the registration's transaction, and so is the
            # poke its WorkerRegistered's delivery would make (the job's sagas move on:
            # provisioning ends, execution assigns and dispatches the job).
            worker = self.store.find(Worker, worker_id)
            if worker is None or worker.job_id != request.job_id:
                raise Unauthenticated(f"no worker {request.worker_id} for job {request.job_id}")
            self.signer.check_registration(request.token, str(worker.id), worker.job_id, worker.token_nonce)
            session_nonce = worker.register(offered, request.hostname[:255], self.engine.clock())
            self.liveness.touch(worker.id, connected=False, timeout=timeout)
            return (worker, session_nonce), [worker]

        meta = Meta(actor=worker_actor(worker_id), correlation_id=request.job_id, done=only_pokes)
        worker, session_nonce = self.engine.change_job(meta, register)
        self.faults.point("register-committed")
        fields = {"worker_id": str(worker.id), "job_id": worker.job_id}
        log.info("worker %s registered for job %s", worker.id, worker.job_id, extra=fields)
        return worker_pb2.RegisterResponse(
            session_token=self.signer.session_token(str(worker.id), session_nonce),
            heartbeat_interval_ms=int(interval * 1000),
        )

    @rpc
    async def Connect(
        self,
        request_iterator: AsyncIterator[worker_pb2.WorkerMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[worker_pb2.ServerMessage]:
        """A task per connected worker, no thread: database work goes to the I/O threads."""
        metadata = _metadata(context)
        worker_id = metadata.get("x-hodei-worker-id", "")
        # Deaf to its own writes (the job accepted, its result): they change nothing it acts on.
        with STREAMS.serving(), self.signals.async_waiter(worker_id, deaf_to=worker_actor(worker_id)) as waiter:
            worker, state = await asyncio.to_thread(self._open, metadata, waiter)
            if self._poller is None:
                self._poller = asyncio.get_running_loop().create_task(self._poll_sessions())
            with about(worker_id=worker.id, job_id=worker.job_id):
                async for message in WorkerSession(self, worker).run(request_iterator, waiter, state):
                    yield message

    def _open(self, metadata: dict[str, str], waiter: AsyncWaiter) -> tuple[Worker, SessionState | None]:
        """The worker whose session the metadata proves, and its first state, in one
        transaction; ``waiter`` listens for the worker's and its job's signals before that
        state is read, so none is missed in between."""
        with command_transaction(self.store.pool):
            worker = self._session_worker(metadata)
            self.signals.listen(waiter, str(worker.id), worker.job_id)
            return worker, fetch_one(self.store.pool, "worker_session_states", ([worker.id],), SessionState)

    def _session_worker(self, metadata: dict[str, str]) -> Worker:
        """The live worker whose session the metadata proves."""
        worker_id = metadata.get("x-hodei-worker-id", "")
        worker = self.store.find(Worker, worker_id)
        if worker is None:
            raise Unauthenticated(f"no worker {worker_id}")
        self.signer.check_session(metadata.get("x-hodei-session", ""), str(worker.id), worker.session_nonce)
        if not worker.is_live:
            raise Unauthenticated(f"worker {worker.id} is {worker.state}: its session is over")
        return worker

    @rpc
    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[worker_pb2.ArtifactUpload],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> worker_pb2.StoredArtifact:
        """Stores one file of the worker's job, for its current attempt: it is the job's
        artifact once the worker's result lists it (hodei.artifacts). A piece is hashed and
        written in a thread while the next is received (one at a time, in order), as the
        agent's fetch does (``hodei_worker.artifacts.write_pieces``)."""
        worker = await asyncio.to_thread(self._session_worker, _metadata(context))

        def begin(piece: worker_pb2.ArtifactUpload) -> Upload:
            if piece.header.job_id != worker.job_id:
                raise Unauthenticated(f"worker {worker.id} may only store artifacts of job {worker.job_id}")
            header = piece.header
            return self.artifacts.begin(worker.job_id, worker.attempt, header.name, header.size_bytes)

        try:
            stored = await received(request_iterator, "header", begin, Upload.finish)
        except OSError as exc:  # the artifacts' disk full or unwritable: the job goes on
            log.error("could not store an artifact of job %s: %s", worker.job_id, exc, extra={"job_id": worker.job_id})
            raise ArtifactRefused(f"the server could not store it ({exc.strerror or exc})") from None
        self.metrics.artifact_bytes.inc(stored.size_bytes)
        return worker_pb2.StoredArtifact(name=stored.name, size_bytes=stored.size_bytes, sha256=stored.sha256)

    @rpc
    async def FetchArtifact(
        self, request: artifacts_pb2.ReadArtifactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[artifacts_pb2.ArtifactPiece]:
        """An artifact of a job the worker's job starts after, when its spec fetches them."""
        worker = await asyncio.to_thread(self._session_worker, _metadata(context))
        own = await asyncio.to_thread(self.store.load, Job, worker.job_id)
        if request.job_id == str(own.id) and request.name == INPUT_NAME and own.spec.input_sha256:
            async for piece in described_pieces(_input(own.spec), read_input(self.artifacts, str(own.id))):
                yield piece
            return
        if not own.spec.fetch_artifacts or request.job_id not in own.spec.after:
            raise PermissionDenied(f"job {own.id} may fetch artifacts only of the jobs it starts after (--after)")
        job = await asyncio.to_thread(self.store.load, Job, request.job_id)
        async for piece in artifact_pieces(self.artifacts, job, request.name, request.attempt):
            yield piece

    async def _poll_sessions(self) -> None:
        while True:
            await asyncio.sleep(STATE_POLL)
            try:
                await asyncio.to_thread(self.poll_sessions)
            except Exception as exc:
                log.warning("could not read the connected workers' states: %s", exc)

    def poll_sessions(self) -> int:
        """Reads every connected worker's state at once and wakes the streams whose worker
        or job asks for something (run-job, cancel, the end); they act as on a signal.
        Returns how many were woken."""
        sessions = dict(self.sessions)
        if not sessions:
            return 0
        rows = fetch_all(self.store.pool, "worker_session_states", (list(sessions),), SessionState)
        found = {row.worker_id: row for row in rows}
        due = [session for worker_id, session in sessions.items() if session.due(found.get(worker_id))]
        for session in due:
            session.wake()
        return len(due)


class WorkerSession:
    """One open stream of one worker."""

    def __init__(self, service: WorkerAgentService, worker: Worker) -> None:
        self.service = service
        self.worker_id = worker.id
        self.job_id = worker.job_id
        self.attempt = worker.attempt
        self.provider_type = worker.provider_type
        self.meta = Meta(actor=worker_actor(worker.id), correlation_id=worker.job_id)
        self.outgoing: asyncio.Queue[worker_pb2.ServerMessage] = asyncio.Queue()
        self.closed = False
        self.sent_run = False
        self.sent_cancel = False
        # The job's signals this stream sent (all of them again on a new stream: the worker
        # delivers each index once).
        self.signals_sent = 0
        # Likewise the commands to run beside the job's (`job exec`) it sent.
        self.execs_sent = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiter: AsyncWaiter | None = None
        # The worker's heartbeat interval, as its registration just gave it (an agent that
        # registered elsewhere may beat faster: more heartbeats, never a false loss).
        self.interval = service.pace.for_workers(len(service.sessions))[0]

    async def run(
        self, requests: AsyncIterator[worker_pb2.WorkerMessage], waiter: AsyncWaiter, state: SessionState | None
    ) -> AsyncIterator[worker_pb2.ServerMessage]:
        """Serves the stream. ``waiter``: woken by the worker's and its job's signals since
        ``state``, the worker's, was read when it connected (acted on first, instead of
        being read again)."""
        service = self.service
        self.loop = asyncio.get_running_loop()
        service.sessions[self.worker_id] = self
        service.liveness.seen(self.worker_id, connected=True)
        self.waiter = waiter
        reader = asyncio.create_task(self._read(requests, waiter))
        try:
            recheck, read = True, state
            while not self.closed:
                if recheck and not await asyncio.to_thread(self._sync, read):
                    return
                read = None
                while not self.outgoing.empty():
                    yield self.outgoing.get_nowait()
                # The worker's own messages (a heartbeat) only nudge: their answers are
                # queued; the worker's state is read again on a signal (or the
                # service's poll finding something for it).
                await waiter.wait_async(None)
                recheck = bool(waiter.take_signal())
        finally:
            self.closed = True
            reader.cancel()
            if service.sessions.get(self.worker_id) is self:
                del service.sessions[self.worker_id]
            service.liveness.seen(self.worker_id, connected=False)

    def wake(self) -> None:
        """Has the stream read its state again, as a signal would."""
        if self.waiter is not None:
            self.waiter.wake()

    def due(self, row: SessionState | None) -> bool:
        """Whether ``row`` (None: the worker is gone) asks this stream to end, or to send
        run-job, cancel or signals that it has not sent."""
        return (
            row is None
            or _ended(row)
            or self._run_due(row)
            or self._cancel_due(row)
            or self._signals_due(row)
            or self._execs_due(row)
        )

    def _run_due(self, row: SessionState) -> bool:
        busy = row.worker_state == WorkerState.BUSY
        return (
            busy and row.job_state == JobState.ASSIGNED and row.worker_attempt == row.job_attempt and not self.sent_run
        )

    def _cancel_due(self, row: SessionState) -> bool:
        return row.worker_state == WorkerState.BUSY and row.job_state == JobState.CANCELLED and not self.sent_cancel

    def _signals_due(self, row: SessionState) -> bool:
        return row.worker_state == WorkerState.BUSY and len(row.signals) > self.signals_sent

    def _send_signals(self, row: SessionState) -> None:
        """Its attempt's signals this stream has not sent, in order."""
        for index in range(self.signals_sent, len(row.signals)):
            attempt, name = row.signals[index]
            if attempt == self.attempt:
                self._send(
                    worker_pb2.ServerMessage(signal=worker_pb2.Signal(job_id=self.job_id, index=index, name=name))
                )
        self.signals_sent = len(row.signals)

    def _execs_due(self, row: SessionState) -> bool:
        return row.worker_state == WorkerState.BUSY and len(row.execs) > self.execs_sent

    def _send_execs(self, row: SessionState) -> None:
        """Its attempt's commands to run beside the job's that have not ended, in order."""
        for entry in row.execs[self.execs_sent :]:
            if entry["attempt"] == self.attempt and "exit_code" not in entry:
                timeout = entry["timeout_seconds"]
                run = worker_pb2.Exec(
                    job_id=self.job_id, index=entry["index"], argv=entry["argv"], timeout_seconds=timeout
                )
                self._send(worker_pb2.ServerMessage(exec=run))
        self.execs_sent = len(row.execs)

    def _send(self, message: worker_pb2.ServerMessage) -> None:
        """Queues a message for the worker, from the loop or from an I/O thread (through
        the loop, in order: before the I/O call's own result reaches the stream's task)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.outgoing.put_nowait, message)

    def _sync(self, read: SessionState | None = None) -> bool:
        """Sends run-job, cancel or signals when the database says so (``read``: what it said a
        moment ago, else it is asked). False ends the stream. Runs in an I/O thread; what
        it sends is queued for the stream's task. One transaction: the state, and the
        job's secrets when run-job is due."""
        with command_transaction(self.service.store.pool):
            row = read or fetch_one(self.service.store.pool, "worker_session_states", ([self.worker_id],), SessionState)
            if row is None or _ended(row):
                return False
            if self._run_due(row):
                self.sent_run = True
                self._send_run(JobSpec.from_payload(row.spec), row.job_attempt)
            if self._cancel_due(row):
                self.sent_cancel = True
                self._send(worker_pb2.ServerMessage(cancel=self._cancel(row)))
            if self._signals_due(row):
                self._send_signals(row)
            if self._execs_due(row):
                self._send_execs(row)
            return True

    def _cancel(self, row: SessionState) -> worker_pb2.CancelJob:
        """The cancel, with what is left of its grace (sent again after a reconnection,
        it is less): the job's, which a cancel's event alone holds."""
        cancel = worker_pb2.CancelJob(job_id=self.job_id, reason=row.error_message or "")
        grace = self.service.store.load(Job, self.job_id).grace_left(self.service.engine.clock())
        if grace is not None:
            cancel.grace_ms = int(grace * 1000)
        return cancel

    def _send_run(self, spec: JobSpec, attempt: int) -> None:
        try:
            secrets = self.service.secrets.open(UUID(self.job_id))
        except SecretsPurged as exc:
            reason = exc.message
            self._update_job(lambda job: job.fail(reason))
            return
        env = spec.env
        if spec.api_token:  # a secret: masked in its output like the others
            secrets["HODEI_TOKEN"] = self.service.signer.job_token(self.job_id, str(self.worker_id))
            env = {**env, "HODEI_SERVER": self.service.address}
        # The jobs it starts after, read once for their artifacts and their outputs.
        after = [self.service.store.load(Job, job_id) for job_id in spec.after]
        self._send(
            worker_pb2.ServerMessage(
                run_job=worker_pb2.RunJob(
                    job_id=self.job_id,
                    command=spec.command,
                    args=spec.args,
                    env=env,
                    working_dir=spec.working_dir,
                    timeout_ms=int(spec.timeout_seconds * 1000),
                    secrets=secrets,
                    artifacts=spec.artifacts,
                    artifacts_exclude=spec.artifacts_exclude,
                    inputs=self._inputs(spec, after),
                    attempt=attempt,
                    input=_input(spec) if spec.input_sha256 else None,
                    **self._after_outputs(after),
                )
            )
        )

    @staticmethod
    def _after_outputs(after: list[Job]) -> dict[str, Any]:
        """The outputs of the jobs it starts after, as RunJob carries them: in the order the
        job names them, up to MOST_AFTER_OUTPUT_BYTES; the jobs past that are counted."""
        given: dict[str, worker_pb2.Outputs] = {}
        size, left_out = 0, 0
        for job in after:
            size += outputs_bytes(job.outputs)
            if size > MOST_AFTER_OUTPUT_BYTES:
                left_out += 1
                continue
            given[str(job.id)] = worker_pb2.Outputs(values=job.outputs)
        return {"after_outputs": given, "after_outputs_left_out": left_out}

    @staticmethod
    def _inputs(spec: JobSpec, after: list[Job]) -> list[worker_pb2.InputArtifact]:
        """The artifacts to fetch before the command runs: each name's latest of every job
        it starts after (``after``), when its spec asks for them."""
        if not spec.fetch_artifacts:
            return []
        return [
            worker_pb2.InputArtifact(job_id=str(job.id), artifact=artifact_message(artifact))
            for job in after
            for artifact in job.latest_artifacts
        ]

    async def _read(self, requests: AsyncIterator[worker_pb2.WorkerMessage], waiter: AsyncWaiter) -> None:
        try:
            async for message in requests:
                if await self._handle(message):
                    waiter.nudge()  # an answer is queued for the worker
        except (grpc.RpcError, grpc.aio.AbortError, asyncio.CancelledError):
            pass  # the stream ended: its worker went, or the call was ended here (a stop)
        except StoreUnavailable as exc:
            # An outage, not a fault of the stream: what could not be saved is not acknowledged,
            # and the worker sends it again on the stream it opens once a server can take it.
            log.warning("worker %s: its stream ends, %s; it will connect again", self.worker_id, exc)
        except Exception:
            log.exception("worker %s stream failed", self.worker_id)
        finally:
            self.closed = True
            waiter.nudge()

    async def _handle(self, message: worker_pb2.WorkerMessage) -> bool:
        """Handles one message; True when an answer was queued. A heartbeat gets none (it
        only proves the worker alive, noted in memory and written in batches; answering
        each doubled a thousand idle workers' traffic) unless the worker's pace changes."""
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            return self._pace(message.heartbeat)
        self.service.liveness.seen(self.worker_id, connected=True)
        if kind == "ack":
            self._own(message.ack.job_id)
            worker_id = str(self.worker_id)
            await asyncio.to_thread(self._update_job, lambda job: job.accept(worker_id))
        elif kind == "log_batch":
            self._own(message.log_batch.job_id)
            await asyncio.to_thread(self._write_logs, message.log_batch)
            self._send(worker_pb2.ServerMessage(log_ack=worker_pb2.LogAck(seq=message.log_batch.seq)))
        elif kind == "result":
            result = message.result
            self._own(result.job_id)
            await asyncio.to_thread(self._record_result, result)
            self._send(worker_pb2.ServerMessage(result_ack=worker_pb2.ResultAck(job_id=self.job_id)))
        elif kind == "exec_result":
            ended = message.exec_result
            self._own(ended.job_id)
            await asyncio.to_thread(self._record_exec, ended)
            self._send(worker_pb2.ServerMessage(exec_ack=worker_pb2.ExecAck(index=ended.index)))
        return True

    def _pace(self, beat: worker_pb2.Heartbeat) -> bool:
        """Notes the heartbeat, and what it says the job uses; once this server's workers
        have grown so that the worker's pace should be a quarter slower or more, gives it
        the new one (its longer timeout is written with the heartbeat, before the worker has
        slowed down). True when one is queued."""
        interval, timeout = self.service.pace.for_workers(len(self.service.sessions) - 1)
        slower = interval >= REPACE * self.interval
        usage = None
        if beat.HasField("usage"):
            said = beat.usage
            usage = Usage(
                said.cpu_cores if said.HasField("cpu_cores") else None,
                said.memory_bytes if said.HasField("memory_bytes") else None,
            )
        self.service.liveness.seen(self.worker_id, connected=True, timeout=timeout if slower else None, usage=usage)
        if not slower:
            return False
        self.interval = interval
        ack = worker_pb2.HeartbeatAck(heartbeat_interval_ms=int(interval * 1000))
        self._send(worker_pb2.ServerMessage(heartbeat_ack=ack))
        return True

    def _record_result(self, result: worker_pb2.JobResult) -> None:
        state = outcome_state(result)
        reason = None if state is JobState.SUCCEEDED else result.message or state.value.lower()
        if result.outcome == worker_pb2.JOB_OUTCOME_WORKER_STOPPED:
            cause = self.service.stopped_by_others(self.provider_type, str(self.worker_id))
            reason = f"{reason}: {cause}" if cause else reason
        ran = None
        if result.HasField("started_at") and result.HasField("finished_at"):
            ran = (
                result.started_at.ToDatetime(tzinfo=UTC).isoformat(),
                result.finished_at.ToDatetime(tzinfo=UTC).isoformat(),
            )
        usage = {name: getattr(result, name) for name in ("cpu_seconds", "peak_memory_bytes") if result.HasField(name)}
        worker_id = str(self.worker_id)
        artifacts = self._stored_artifacts(result)
        outputs = dict(result.outputs)
        if (problem := outputs_problem(outputs)) is not None:
            log.warning("worker %s: its job's outputs are not kept: %s", self.worker_id, problem)
            outputs = {}
        clock = self.service.engine.clock

        def finish(job: Job) -> None:
            job.store_artifacts(worker_id, artifacts)
            job.finish(worker_id, state, result.exit_code, reason, ran, clock(), usage or None, outputs or None)

        self._update_job(finish)
        self.service.logs.forget(self.job_id)

    def _record_exec(self, ended: worker_pb2.ExecResult) -> None:
        """What a command run beside the job's printed, kept where any server reads it, then
        its end in the job's history (whoever waits for it is woken by that), in the command
        that records it: the file is there before the event commits. One sent again (its
        acknowledgement lost) is only acknowledged: its asker may have taken it already."""

        def record(job: Job) -> None:
            if job.exec_ended_already(ended.index):
                return
            self.service.exec_results.keep(self.job_id, ended)
            job.exec_ended(ended.index, ended.exit_code, ended.message, ended.stdout_bytes, ended.stderr_bytes)

        self._update_job(record)

    def _stored_artifacts(self, result: worker_pb2.JobResult) -> list[dict[str, Any]]:
        """The artifacts the result lists that this attempt stored (a worker can name no other)."""
        found = []
        for artifact in result.artifacts:
            stored = Stored(artifact.name, artifact.size_bytes, artifact.sha256)
            try:
                self.service.artifacts.check(self.job_id, self.attempt, stored)
            except InvalidInput as exc:
                log.warning("worker %s: %s", self.worker_id, exc.message)
                continue
            found.append(asdict(stored))
        return found

    def _own(self, job_id: str) -> None:
        if job_id != self.job_id:
            raise Unauthenticated(f"worker {self.worker_id} may only report on job {self.job_id}, not {job_id}")

    def _update_job(self, change: Callable[[Job], None]) -> None:
        """Changes the job and, in the same transaction, moves the sagas the change lets
        move: the poke its JobStatusChanged's delivery would make, which is all that
        delivery would do (``only_pokes``), so that row is written delivered."""

        def changed() -> tuple[None, list[Job]]:
            job = self.service.store.load(Job, self.job_id)
            try:
                change(job)
            except InvalidTransition as exc:
                log.warning("worker %s: %s", self.worker_id, exc)
            return None, [job]

        self.service.engine.change_job(replace(self.meta, done=only_pokes), changed)

    def _write_logs(self, batch: worker_pb2.LogBatch) -> None:
        """Stores a batch once: a batch sent again after a lost acknowledgement (this or
        another server died) is found in the job's log file and only acknowledged."""
        # Milliseconds from the fields: Timestamp.ToMilliseconds is Python code, per line.
        lines = [
            LogLine(
                line.timestamp.seconds * 1000 + line.timestamp.nanos // 1_000_000,
                STDERR if line.stream == worker_pb2.LOG_STREAM_STDERR else STDOUT,
                line.line,
                line.partial,
            )
            for line in batch.lines
        ]
        try:
            if self.service.logs.append(self.job_id, lines, (self.attempt, batch.seq)) is None:
                return
        except LogNotStored as exc:  # acknowledged all the same: the job goes on, its log says so
            self.service.metrics.log_lines_lost.inc(exc.lines)
            return
        self.service.metrics.log_bytes.inc(sum(len(line.text.encode()) for line in lines))
        self.service.signals.publish(f"log:{self.job_id}")
