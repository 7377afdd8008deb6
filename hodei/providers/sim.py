"""The ``sim`` provider: a simulated fleet, for load tests and capacity planning.

Its workers are coroutines in one process of their own, which the server starts and
which ends with it — not a process or a container each. Each registers with its
single-use credential, opens a real gRPC stream to a server, acknowledges its job,
waits the job's ``HODEI_SIM_SECONDS`` (default 0), sends ``HODEI_SIM_LINES`` lines of
output (default 0), uploads a file of ``HODEI_SIM_ARTIFACT_BYTES`` (default 0: none) for
each ``--artifact`` pattern, and reports ``HODEI_SIM_EXIT_CODE`` (default 0) — all read
from the job's own ``--env``. It takes ``job signal`` as a command would: one it handles
(``HODEI_SIM_HANDLES``) leaves it running, STOP and TSTP stop its clock until CONT, and
any other but WINCH ends it as killed by that signal. A cancel ends it as SIGTERM would
(143), or as SIGKILL (137) when it gives no grace or the job handles TERM. Everything but
the start of a process runs for real: sagas, admission, the outbox, streams, logs,
heartbeats.
Simulated workers live as long as the server process; after a restart their jobs are
recovered like those of any lost worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from hodei_worker.agent import KEEPALIVE
from hodei_worker.artifacts import PIECE_BYTES, TRANSFER_SECONDS, counted, refusal
from hodei_worker.runner import exit_code_of, signal_note

from hodei._proto import worker_pb2, worker_pb2_grpc
from hodei.domain.job import check_signal
from hodei.domain.provider import ProviderType
from hodei.errors import InvalidInput, ProviderError
from hodei.providers.base import Health, Observation, WorkerLaunch, WorkerProvider
from hodei.providers.helpers import send, stop

# Lines per log batch: far below the server's batch limits.
LINES_PER_BATCH = 1000
MAX_SIM_LINES = 10_000_000
FLEET = "the simulated fleet process"
# What a command's signals do by default, when it does not handle them (signal(7)).
STOPPING = frozenset({"STOP", "TSTP"})
IGNORED = frozenset({"CONT", "WINCH"})
UNHANDLEABLE = frozenset({"KILL", "STOP"})
# What a simulated file holds: a text of its own size, over and over.
_FILLER = b"a simulated artifact of the sim provider\n"
_GLOB = re.compile(r"\*+|\?|\[[^]]*\]")


@dataclass(frozen=True)
class Simulation:
    """What a simulated job does, from its environment."""

    seconds: float = 0.0
    exit_code: int = 0
    lines: int = 0
    # The size of the file each of its --artifact patterns stands for (0: none is stored).
    artifact_bytes: int = 0
    # The signals the simulated command handles (and goes on).
    handles: frozenset[str] = frozenset()

    @classmethod
    def of(cls, env: Mapping[str, str]) -> Simulation:
        try:
            found = cls(
                seconds=float(env.get("HODEI_SIM_SECONDS", "0")),
                exit_code=int(env.get("HODEI_SIM_EXIT_CODE", "0")),
                lines=int(env.get("HODEI_SIM_LINES", "0")),
                artifact_bytes=int(env.get("HODEI_SIM_ARTIFACT_BYTES", "0")),
            )
        except ValueError as exc:
            raise InvalidInput(
                f"HODEI_SIM_SECONDS, HODEI_SIM_EXIT_CODE, HODEI_SIM_LINES, HODEI_SIM_ARTIFACT_BYTES: {exc}"
            ) from None
        if not 0 <= found.seconds < float("inf") or not 0 <= found.lines <= MAX_SIM_LINES:
            raise InvalidInput(f"HODEI_SIM_SECONDS must be >= 0 and HODEI_SIM_LINES 0 to {MAX_SIM_LINES}")
        if not 0 <= found.exit_code <= 255:  # what a process can exit with
            raise InvalidInput(f"HODEI_SIM_EXIT_CODE must be 0 to 255, got {found.exit_code}")
        if found.artifact_bytes < 0:
            raise InvalidInput(f"HODEI_SIM_ARTIFACT_BYTES must be >= 0, got {found.artifact_bytes}")
        try:
            names = env.get("HODEI_SIM_HANDLES", "").replace(",", " ").split()
            handles = frozenset(check_signal(name) for name in names)
        except InvalidInput as exc:
            raise InvalidInput(f"HODEI_SIM_HANDLES (signals separated by commas): {exc}") from None
        if handles & UNHANDLEABLE:
            raise InvalidInput("HODEI_SIM_HANDLES: no command can handle KILL or STOP")
        return replace(found, handles=handles)

    def effect(self, name: str) -> Literal["stop", "go on", "end"]:
        """What a signal does to the simulated command: "stop", "go on" or "end"."""
        if name in self.handles or name in IGNORED:
            return "go on"
        return "stop" if name in STOPPING else "end"


class _Clock:
    """The simulated command's own time: it stands still while the command is stopped
    (STOP, TSTP) and goes on with CONT; a timeout counts wall time, as for a process."""

    def __init__(self) -> None:
        self.going = asyncio.Event()
        self.going.set()
        self.halted = asyncio.Event()

    async def spend(self, seconds: float) -> None:
        left = seconds
        while left > 0:
            await self.going.wait()
            began = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.halted.wait(), left)
            left -= time.monotonic() - began

    def stop(self) -> None:
        self.going.clear()
        self.halted.set()

    def resume(self) -> None:
        self.halted.clear()
        self.going.set()


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def artifact_name(pattern: str) -> str:
    """The file a simulated job stores for one of its ``--artifact`` patterns: the pattern,
    each wildcard (``*``, ``**``, ``?``, ``[…]``) read as ``sim``."""
    return _GLOB.sub("sim", pattern)


def _pieces(job_id: str, name: str, size: int) -> Iterator[worker_pb2.ArtifactUpload]:
    """An upload of ``size`` bytes of filler, in the agent's pieces."""
    yield worker_pb2.ArtifactUpload(header=worker_pb2.ArtifactHeader(job_id=job_id, name=name, size_bytes=size))
    block = _FILLER * (PIECE_BYTES // len(_FILLER) + 1)
    for start in range(0, size, PIECE_BYTES):
        yield worker_pb2.ArtifactUpload(data=block[: min(PIECE_BYTES, size - start)])


# A connection of its own for each worker, pinged as the agent pings its own: gRPC otherwise
# shares one between the channels of a process that dial the same address, and a fleet of a
# thousand would cost the server one socket.
_OWN_CONNECTION = (*KEEPALIVE, ("grpc.use_local_subchannel_pool", 1))


def _channel(address: str, env: Mapping[str, str]) -> grpc.aio.Channel:
    ca = env.get("HODEI_TLS_CA_PEM")
    if ca is None:
        return grpc.aio.insecure_channel(address, options=_OWN_CONNECTION)
    cert, key = env.get("HODEI_TLS_CERT_PEM"), env.get("HODEI_TLS_KEY_PEM")
    credentials = grpc.ssl_channel_credentials(
        ca.encode(), key.encode() if key else None, cert.encode() if cert else None
    )
    return grpc.aio.secure_channel(address, credentials, options=_OWN_CONNECTION)


def _not_run(sent: worker_pb2.Exec) -> worker_pb2.WorkerMessage:
    """The answer to `job exec`: a simulated worker runs no command, as it runs none of its
    job's (exit 126, cannot execute, and why)."""
    ended = worker_pb2.ExecResult(
        job_id=sent.job_id, index=sent.index, exit_code=126, message="not started: a sim worker runs no commands"
    )
    return worker_pb2.WorkerMessage(exec_result=ended)


class SimWorker:
    """One simulated worker: the worker protocol of hodei_worker.agent, without a process."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.worker_id = env["HODEI_WORKER_ID"]
        self.job_id = env["HODEI_JOB_ID"]
        self.outbox: asyncio.Queue[worker_pb2.WorkerMessage | None] = asyncio.Queue()
        self.sent_seq = 0  # the last log batch's
        self.acked_seq = 0
        self.logs_acked = asyncio.Event()
        self.interval = 2.0  # seconds between heartbeats; the server sets it
        self.job: asyncio.Task[None] | None = None
        self.started: Timestamp | None = None
        # Its job's settings, once they were read and found good.
        self.simulation: Simulation | None = None
        self.clock = _Clock()
        self.next_signal = 0  # the next `job signal`'s index: each is taken once
        self.reported = False
        self.stub: worker_pb2_grpc.WorkerAgentServiceAsyncStub | None = None
        self.metadata: tuple[tuple[str, str], ...] = ()

    async def run(self) -> None:
        address = self.env["HODEI_SERVER_ADDRESS"].split(",")[0]
        async with _channel(address, self.env) as channel:
            stub = worker_pb2_grpc.WorkerAgentServiceStub(channel)
            reply = await stub.Register(
                worker_pb2.RegisterRequest(
                    worker_id=self.worker_id,
                    job_id=self.job_id,
                    token=self.env["HODEI_WORKER_TOKEN"],
                    hostname="sim",
                    agent_version="sim",
                ),
                timeout=30,
            )
            self.interval = max(reply.heartbeat_interval_ms / 1000, 0.2)
            self.metadata = (("x-hodei-worker-id", self.worker_id), ("x-hodei-session", reply.session_token))
            self.stub = stub
            call = stub.Connect(self._outgoing(), metadata=self.metadata)
            try:
                async for message in call:
                    kind = message.WhichOneof("kind")
                    if kind == "run_job" and self.job is None:
                        await self.outbox.put(worker_pb2.WorkerMessage(ack=worker_pb2.RunJobAck(job_id=self.job_id)))
                        self.job = asyncio.create_task(self._simulate(message.run_job))
                    elif kind == "cancel":
                        await self._end(
                            worker_pb2.JOB_OUTCOME_CANCELLED, self._cancelled_code(message.cancel), "cancelled"
                        )
                    elif kind == "signal":
                        await self._signal(message.signal)
                    elif kind == "exec":
                        await self.outbox.put(_not_run(message.exec))
                    elif kind == "log_ack":
                        self.acked_seq = max(self.acked_seq, message.log_ack.seq)
                        self.logs_acked.set()
                    elif kind == "heartbeat_ack" and message.heartbeat_ack.heartbeat_interval_ms > 0:
                        self.interval = max(message.heartbeat_ack.heartbeat_interval_ms / 1000, 0.2)
                    elif kind == "result_ack":
                        return
            finally:
                if self.job is not None:
                    self.job.cancel()
                await self.outbox.put(None)
                call.cancel()

    async def _outgoing(self) -> AsyncIterator[worker_pb2.WorkerMessage]:
        yield worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat(sent_at=_now()))
        while True:
            try:
                message = await asyncio.wait_for(self.outbox.get(), self.interval)
            except TimeoutError:
                message = worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat(sent_at=_now()))
            if message is None:
                return
            yield message

    async def _simulate(self, run: worker_pb2.RunJob) -> None:
        self.started = _now()
        try:
            simulation = Simulation.of(run.env)
        except InvalidInput as exc:
            await self._report(worker_pb2.JOB_OUTCOME_START_FAILED, 0, str(exc))
            return
        self.simulation = simulation
        timeout = run.timeout_ms / 1000 if run.timeout_ms else None
        timed_out = False
        if simulation.seconds:
            try:
                await asyncio.wait_for(self.clock.spend(simulation.seconds), timeout)
            except TimeoutError:
                timed_out = True
        await self._print(simulation.lines)
        stored = await self._store(run.artifacts, simulation.artifact_bytes)
        if timed_out:
            await self._report(worker_pb2.JOB_OUTCOME_TIMED_OUT, 0, f"timed out after {timeout:g}s", stored)
        else:
            code = simulation.exit_code
            await self._report(worker_pb2.JOB_OUTCOME_EXITED, code, f"exited with code {code}", stored)

    async def _store(self, patterns: Sequence[str], size: int) -> list[worker_pb2.StoredArtifact]:
        """A file of ``size`` bytes for each pattern, uploaded as the agent uploads the
        files its patterns match, and said in the job's log as the agent says it."""
        if not size or not patterns or self.stub is None:
            return []
        stored, notes = [], []
        until = time.monotonic() + TRANSFER_SECONDS
        for name in dict.fromkeys(artifact_name(pattern) for pattern in patterns):
            try:
                stored.append(
                    await self.stub.UploadArtifact(
                        _pieces(self.job_id, name, size),
                        metadata=self.metadata,
                        timeout=max(until - time.monotonic(), 0.001),
                    )
                )
            except grpc.RpcError as exc:
                notes.append(f"artifact {name} not stored: {refusal(exc, 'uploads')}")
        notes.append(f"stored {counted(len(stored), 'artifact')}, {sum(a.size_bytes for a in stored)} bytes")
        await self._send(worker_pb2.LOG_STREAM_STDERR, [f"[hodei] {note}" for note in notes])
        return stored

    async def _signal(self, sent: worker_pb2.Signal) -> None:
        """Each index once, said in the job's log as the agent says it."""
        if sent.index < self.next_signal or self.simulation is None or self.reported or sent.job_id != self.job_id:
            return
        self.next_signal = sent.index + 1
        await self._send(worker_pb2.LOG_STREAM_STDERR, [signal_note(sent.name)])
        effect = self.simulation.effect(sent.name)
        if sent.name == "CONT":
            self.clock.resume()
        elif effect == "stop":
            self.clock.stop()
        elif effect == "end":
            code = exit_code_of(-signal.Signals[f"SIG{sent.name}"])
            await self._end(worker_pb2.JOB_OUTCOME_EXITED, code, f"exited with code {code}")

    def _cancelled_code(self, cancel: worker_pb2.CancelJob) -> int:
        """How a command ends when cancelled: by SIGTERM (143), or by SIGKILL (137) when
        the cancel gives it no grace or it handles TERM (the grace's wait is not simulated)."""
        ends = self.simulation is not None and self.simulation.effect("TERM") == "end"
        no_grace = cancel.HasField("grace_ms") and cancel.grace_ms == 0
        return exit_code_of(-(signal.SIGKILL if no_grace or not ends else signal.SIGTERM))

    async def _end(self, outcome: worker_pb2.JobOutcome.ValueType, code: int, message: str) -> None:
        """Ends the simulated command before its time (a cancel, a signal), unless it
        has ended already."""
        if self.job is None or self.reported:
            return
        self.job.cancel()
        await self._report(outcome, code, message)

    async def _send(self, stream: worker_pb2.LogStream.ValueType, lines: list[str]) -> None:
        self.sent_seq += 1
        now = _now()
        batch = [worker_pb2.LogLine(stream=stream, line=line, timestamp=now) for line in lines]
        await self.outbox.put(
            worker_pb2.WorkerMessage(log_batch=worker_pb2.LogBatch(job_id=self.job_id, seq=self.sent_seq, lines=batch))
        )

    async def _print(self, lines: int) -> None:
        """Sends the output in batches and waits until the server stored them all."""
        for first in range(1, lines + 1, LINES_PER_BATCH):
            numbers = range(first, min(first + LINES_PER_BATCH, lines + 1))
            await self._send(worker_pb2.LOG_STREAM_STDOUT, [f"sim line {number}" for number in numbers])
        while self.acked_seq < self.sent_seq:
            self.logs_acked.clear()
            await self.logs_acked.wait()

    async def _report(
        self,
        outcome: worker_pb2.JobOutcome.ValueType,
        code: int,
        message: str,
        artifacts: list[worker_pb2.StoredArtifact] | None = None,
    ) -> None:
        self.reported = True
        result = worker_pb2.JobResult(
            job_id=self.job_id,
            outcome=outcome,
            exit_code=code,
            message=message,
            last_log_seq=self.sent_seq,
            artifacts=artifacts or [],
        )
        if self.started is not None:
            result.started_at.CopyFrom(self.started)
            result.finished_at.CopyFrom(_now())
        await self.outbox.put(worker_pb2.WorkerMessage(result=result))


@dataclass
class _Sim:
    """One simulated worker as the server sees it: what ``observe`` reports, kept ready
    (the sweeper asks every second, for each of a thousand workers)."""

    observation: Observation
    # The fleet process running it.
    fleet: int
    # "Type: message" when the simulated worker raised.
    error: str | None = None

    @property
    def ended(self) -> bool:
        return not self.observation.running

    def end(self, error: str | None) -> None:
        self.error = error
        failure = "the simulated worker ended" + (f": {error}" if error else "")
        self.observation = replace(self.observation, running=False, failure=failure)


class SimProvider(WorkerProvider):
    """Runs the simulated workers in one process of their own (``python -m
    hodei.providers.sim``), started with the first of them: what the server spends is then
    the control plane's alone, as with real workers, and the simulation does not compete
    for the server's interpreter. The fleet reads orders on its stdin and reports each
    worker's end on its stdout, one JSON object a line; it ends with its stdin, so also
    when the server is killed."""

    provider_type = ProviderType.SIM

    def __init__(self) -> None:
        # Two locks: ``_lock`` guards the workers' states (taken by the fleet's listener),
        # ``_writing`` the fleet's stdin. A write that waits for the fleet to read never
        # holds up the listener, which is what lets a busy fleet read again.
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._workers: dict[str, _Sim] = {}
        self._fleet: subprocess.Popen[bytes] | None = None

    def create_worker(self, launch: WorkerLaunch) -> str:
        with self._writing:
            fleet = self._running_fleet()
            with self._lock:
                if launch.worker_id in self._workers:
                    return f"sim-{launch.worker_id}"
                # Noted before the order: its end may be reported as soon as it is sent.
                seen = Observation(launch.worker_id, launch.job_id, f"sim-{launch.worker_id}", True)
                self._workers[launch.worker_id] = _Sim(seen, fleet.pid)
            try:
                send(fleet, {"start": launch.worker_id, "env": dict(launch.env)}, FLEET)
            except ProviderError:
                with self._lock:
                    self._workers.pop(launch.worker_id, None)
                raise
        return f"sim-{launch.worker_id}"

    def destroy_worker(self, worker_id: str) -> None:
        with self._lock:
            sim = self._workers.pop(worker_id, None)
        if sim is None or sim.ended:
            return
        with self._writing:
            fleet = self._fleet
            if fleet is not None and fleet.pid == sim.fleet and fleet.poll() is None:
                with contextlib.suppress(ProviderError):  # gone since: it stopped the worker
                    send(fleet, {"stop": worker_id}, FLEET)

    def output_tail(self, worker_id: str, lines: int) -> str:
        with self._lock:
            sim = self._workers.get(worker_id)
            return (sim.error or "") if sim is not None else ""

    def observe(self) -> list[Observation]:
        with self._lock:
            return [sim.observation for sim in self._workers.values()]

    def health(self) -> Health:
        # A fixed message: health is recorded (an event) whenever it changes, and the
        # provider is read for every job, so no count or pid may go in it.
        return Health(True, "simulated workers, in one process of their own")

    def close(self) -> None:
        with self._writing, self._lock:
            fleet, self._fleet = self._fleet, None
            self._workers.clear()
        if fleet is not None:
            stop(fleet)

    def _running_fleet(self) -> subprocess.Popen[bytes]:
        """The fleet process (under ``_writing``), started if it is not running."""
        if self._fleet is None or self._fleet.poll() is not None:
            self._fleet = self._start_fleet()
        return self._fleet

    def _start_fleet(self) -> subprocess.Popen[bytes]:
        fleet = subprocess.Popen(
            [sys.executable, "-m", "hodei.providers.sim"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        threading.Thread(target=self._listen, args=(fleet,), name="hodei-sim-fleet", daemon=True).start()
        return fleet

    def _listen(self, fleet: subprocess.Popen[bytes]) -> None:
        """Notes each worker's end as the fleet reports it; when the fleet itself ends,
        every worker it ran has ended with it."""
        assert fleet.stdout is not None
        for line in fleet.stdout:
            report = orjson.loads(line)
            with self._lock:
                sim = self._workers.get(report["ended"])
                if sim is not None:
                    sim.end(report["error"])
        code = fleet.wait()
        with self._lock:
            for sim in self._workers.values():
                if sim.fleet == fleet.pid and not sim.ended:
                    sim.end(f"the simulated fleet process exited with code {code}")


# The fleet process ------------------------------------------------------------------


async def _run_fleet() -> None:
    """Carries out the server's orders until its stdin ends; then stops every worker."""
    loop = asyncio.get_running_loop()
    orders = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(orders), sys.stdin)
    running: dict[str, asyncio.Task[None]] = {}

    def ended(worker_id: str, task: asyncio.Task[None]) -> None:
        if running.get(worker_id) is not task or task.cancelled():
            return
        del running[worker_id]
        failure = task.exception()
        error = f"{type(failure).__name__}: {failure}" if failure else None
        sys.stdout.buffer.write(orjson.dumps({"ended": worker_id, "error": error}) + b"\n")
        sys.stdout.flush()

    while line := await orders.readline():
        order = orjson.loads(line)
        if "start" in order:
            task = asyncio.create_task(SimWorker(order["env"]).run())
            running[order["start"]] = task
            task.add_done_callback(partial(ended, order["start"]))
        elif (stopped := running.pop(order["stop"], None)) is not None:
            stopped.cancel()
    for task in running.values():
        task.cancel()
    await asyncio.gather(*running.values(), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(_run_fleet())
