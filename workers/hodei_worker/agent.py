"""``hodei-worker``: registers with the server, receives its one job, runs it, streams
its output, reports the result and exits.

Configuration (set by the provider that started the worker):
    HODEI_SERVER_ADDRESS   host:port of the server, or several, comma-separated: any
                           server sharing the database will do (tried in turn)
    HODEI_WORKER_ID        this worker's id
    HODEI_JOB_ID           the job it may run
    HODEI_WORKER_TOKEN     single-use registration token
    HODEI_KILL_GRACE       seconds between SIGTERM and SIGKILL (default 5)
    HODEI_TLS_CA_PEM       TLS: the CA bundle to trust, as PEM text (or HODEI_TLS_CA: a file)
    HODEI_TLS_CERT_PEM     mutual TLS: this worker's client certificate (and HODEI_TLS_KEY_PEM)
    HODEI_TLS_SERVER_NAME  TLS: the name to expect in the server's certificate, if not its address
    HODEI_JOB_USER         run the job as this user (name, uid or uid:gid) when the agent is root
    HODEI_WORKER_ORPHAN_TIMEOUT  seconds without any server before the job is stopped (300)
    HODEI_ECHO_OUTPUT      0: do not copy the job's output to the agent's own stdout/stderr
                           (1, the default: its first ECHO_BYTES)
    HODEI_OPEN_FILES       the soft limit of open files the job is to have (the local provider's)

The job sees none of these: its environment is its own variables and secrets over a
minimal base (see runner.job_environment), and the agent is non-dumpable, so a job
running as the same user cannot read the agent's /proc files.

Exit codes: 0 result delivered; 2 bad configuration; 3 credentials refused;
4 no server reachable for HODEI_WORKER_ORPHAN_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# The agent forks the job while gRPC threads run. gRPC's fork handlers would then run in
# the child between fork and exec, and crash it now and then (SIGSEGV, SIGABRT) or hang;
# the child only execs, so it needs none of them.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from hodei._proto import artifacts_pb2, worker_pb2, worker_pb2_grpc
from hodei_worker import __version__
from hodei_worker.batcher import MAX_SENDS, Batch, LogBatcher
from hodei_worker.masking import Masker
from hodei_worker.runner import (
    NOT_RUNNING,
    OUTPUT_FILE,
    STDERR,
    Finished,
    JobProcess,
    JobUser,
    Outcome,
    UsageSampler,
    argv_for,
    become_subreaper,
    hide_from_jobs,
    home_name,
    job_environment,
    remove_home,
    signal_note,
)

# What is kept of each stream of a command run beside the job's (`job exec`): the
# server's hodei.domain.execs.MOST_OUTPUT_BYTES, which it cuts to whatever is sent.
EXEC_OUTPUT_BYTES = 512 * 1024
# How long the job's result waits for such commands to say how they ended (the job's end
# kills them).
EXEC_ENDS_WITHIN = 5.0

# Backoff between attempts to reach a server.
RETRY_FIRST, RETRY_MAX = 0.05, 5.0
_OUTCOMES = {
    Outcome.EXITED: worker_pb2.JOB_OUTCOME_EXITED,
    Outcome.TIMED_OUT: worker_pb2.JOB_OUTCOME_TIMED_OUT,
    Outcome.CANCELLED: worker_pb2.JOB_OUTCOME_CANCELLED,
    Outcome.START_FAILED: worker_pb2.JOB_OUTCOME_START_FAILED,
    Outcome.WORKER_STOPPED: worker_pb2.JOB_OUTCOME_WORKER_STOPPED,
}


def say(message: str) -> None:
    """The agent's own word, on its stderr: for a local worker a file in the server's log
    directory, whose disk may be full. Lost then, never in the way of the job's report."""
    with contextlib.suppress(OSError, ValueError):
        print(f"[hodei-worker] {message}", file=sys.stderr, flush=True)


# The job's output copied to the agent's own stdout and stderr, at most (``docker logs``,
# ``kubectl logs``): an engine keeps that copy on its host's disk as it is set to (Docker's
# default json-file driver with no limit, at three times the text for short lines), for
# as long as the container is kept, beside the stored log, which is the one that counts
# and has its own limit (HODEI_MAX_LOG_BYTES).
ECHO_BYTES = 16 * 1024 * 1024


class Echo:
    """The copy of the job's output on the agent's own stdout and stderr: its first
    ``most`` characters, then a line that says where the rest is."""

    def __init__(self, job_id: str, most: int = ECHO_BYTES) -> None:
        self.job_id = job_id
        self.most = self.left = most
        self._lock = threading.Lock()  # the job's stdout and stderr are read apart

    def write(self, stream: str, texts: list[str], partial: bool) -> None:
        text = "\n".join(texts) + ("" if partial else "\n")
        with self._lock:
            if self.left <= 0:
                return
            self.left -= len(text)
            last = self.left <= 0
        target = sys.stderr if stream == STDERR else sys.stdout
        with contextlib.suppress(OSError, ValueError):  # the stored log is the one that counts
            target.write(text)
            target.flush()
        if last:
            say(
                f"the job's output is copied here up to {self.most / 2**20:g} MiB and no further: all of it is in "
                f"its stored log (`hodei-jobs-cli job logs {self.job_id}`)"
            )


class Fatal(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Settings:
    servers: tuple[str, ...]
    worker_id: str
    job_id: str
    token: str
    kill_grace: float
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_server_name: str | None = None
    job_user: JobUser | None = None
    orphan_timeout: float = 300.0
    echo_output: bool = True
    # In a job's own image (`job run --image`): the image's environment (ENV) and working
    # directory (WORKDIR), which the command gets as a run of the image would give them.
    image_env: Mapping[str, str] = field(default_factory=dict)
    image_workdir: str = ""
    # Where the job's home is made (HODEI_JOB_HOMES: the local provider names the one it
    # cleans up; elsewhere the container's or pod's temporary directory).
    homes: str = field(default_factory=tempfile.gettempdir)

    @classmethod
    def from_env(cls) -> Settings:
        missing = [
            name
            for name in ("HODEI_SERVER_ADDRESS", "HODEI_WORKER_ID", "HODEI_JOB_ID", "HODEI_WORKER_TOKEN")
            if not os.environ.get(name)
        ]
        if missing:
            raise Fatal(f"missing environment: {', '.join(missing)}", 2)
        return cls(
            servers=tuple(part.strip() for part in os.environ["HODEI_SERVER_ADDRESS"].split(",") if part.strip()),
            worker_id=os.environ["HODEI_WORKER_ID"],
            job_id=os.environ["HODEI_JOB_ID"],
            token=os.environ["HODEI_WORKER_TOKEN"],
            kill_grace=_seconds("HODEI_KILL_GRACE", 5.0),
            tls_ca=_pem("HODEI_TLS_CA"),
            tls_cert=_pem("HODEI_TLS_CERT"),
            tls_key=_pem("HODEI_TLS_KEY"),
            tls_server_name=os.environ.get("HODEI_TLS_SERVER_NAME") or None,
            job_user=_job_user(),
            orphan_timeout=_seconds("HODEI_WORKER_ORPHAN_TIMEOUT", 300.0),
            echo_output=os.environ.get("HODEI_ECHO_OUTPUT", "1") != "0",
            homes=os.environ.get("HODEI_JOB_HOMES") or tempfile.gettempdir(),
            **image_settings(),
        )


def make_home(homes: str, worker_id: str) -> str:
    """The job's home, private to it, named after its worker (``home_name``); should that
    name be taken (made by someone else first), a random one beside it, which only this
    agent removes."""
    named = os.path.join(homes, home_name(worker_id))
    try:
        os.mkdir(named, 0o700)
    except FileExistsError:
        return tempfile.mkdtemp(prefix=f"{home_name(worker_id)}-", dir=homes)
    return named


def image_settings() -> dict[str, Any]:
    """In a job's own image, the provider names the variables it set for the agent
    (HODEI_AGENT_VARIABLES): the others are the image's ENV and what the engine adds to
    any container (HOSTNAME, HOME), but Kubernetes' own (KUBERNETES_SERVICE_HOST, …); the
    directory the agent starts in is the image's WORKDIR, but `/`, an image's without one,
    where a job not run as root could write nothing: the job gets a scratch directory then."""
    named = os.environ.get("HODEI_AGENT_VARIABLES")
    if named is None:
        return {}
    ours = set(named.split(","))
    image_env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("KUBERNETES_")}
    workdir = os.getcwd()
    return {"image_env": image_env, "image_workdir": "" if workdir == "/" else workdir}


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        raise Fatal(f"{name} must be a number of seconds", 2) from None
    if value <= 0:
        raise Fatal(f"{name} must be positive", 2)
    return value


def _pem(name: str) -> bytes | None:
    """``<NAME>_PEM`` holds the PEM text itself; ``<NAME>`` names a file."""
    text = os.environ.get(f"{name}_PEM")
    if text:
        return text.encode()
    path = os.environ.get(name)
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Fatal(f"{name}={path}: {exc.strerror}", 2) from None


def _job_user() -> JobUser | None:
    value = os.environ.get("HODEI_JOB_USER")
    if not value or os.geteuid() != 0:
        return None
    try:
        return JobUser.parse(value)
    except KeyError:
        raise Fatal(f"HODEI_JOB_USER={value}: no such user", 2) from None


# The worker's channel's pings (the simulated workers' too, hodei.providers.sim).
KEEPALIVE: tuple[tuple[str, object], ...] = (("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000))


def open_channel(settings: Settings, address: str) -> grpc.Channel:
    options = list(KEEPALIVE)
    if settings.tls_ca is None:
        return grpc.insecure_channel(address, options=options)
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    credentials = grpc.ssl_channel_credentials(settings.tls_ca, settings.tls_key, settings.tls_cert)
    return grpc.secure_channel(address, credentials, options=options)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._server = -1
        self.channel: grpc.Channel | None = None
        self.stub = self._next_server()
        self.mask = Masker(())
        self.session = ""
        self.heartbeat_interval = 2.0
        # What the job uses, with each heartbeat; when the last one went (monotonic).
        self.usage = UsageSampler(settings.worker_id)
        self.last_beat = 0.0
        self.outbox: queue.Queue[worker_pb2.WorkerMessage | None] = queue.Queue()
        self.batcher = LogBatcher(self._send_batch)
        self.echo = Echo(settings.job_id) if settings.echo_output else None
        self.process: JobProcess | None = None
        self.job_thread: threading.Thread | None = None
        self.result: worker_pb2.JobResult | None = None
        self.home = ""
        self.working_dir = ""
        self.artifacts: tuple[str, ...] = ()
        self.artifacts_exclude: tuple[str, ...] = ()
        self.result_acked = threading.Event()
        # The next signal's index (`job signal`): a stream opened again sends them all again.
        self.next_signal = 0
        # Commands run beside the job's (`job exec`): the indices begun (each runs once),
        # and the results not yet acknowledged (sent again on a new stream).
        self.execs_begun: dict[int, threading.Thread] = {}
        self.exec_results: dict[int, worker_pb2.WorkerMessage] = {}
        self.exec_lock = threading.Lock()

    def _next_server(self) -> worker_pb2_grpc.WorkerAgentServiceStub:
        """A stub for the next server address (they take turns after each failure). The
        new stub is in place before the old channel closes: a transfer that the closing cuts
        (``hodei_worker.artifacts``) then finds another stub and goes again on it."""
        self._server = (self._server + 1) % len(self.settings.servers)
        old = self.channel
        self.channel = open_channel(self.settings, self.settings.servers[self._server])
        self.stub = worker_pb2_grpc.WorkerAgentServiceStub(self.channel)
        if old is not None:
            old.close()
        return self.stub

    @property
    def server(self) -> str:
        return self.settings.servers[self._server]

    # Registration -------------------------------------------------------------

    def register(self) -> None:
        """Registering again after a lost reply is safe: the server answers with the same
        session while the credential is valid."""
        deadline = time.monotonic() + self.settings.orphan_timeout
        delay = RETRY_FIRST
        while True:
            try:
                response = self.stub.Register(
                    worker_pb2.RegisterRequest(
                        worker_id=self.settings.worker_id,
                        job_id=self.settings.job_id,
                        token=self.settings.token,
                        hostname=socket.gethostname(),
                        agent_version=__version__,
                    ),
                    timeout=10,
                )
                self.session = response.session_token
                self.heartbeat_interval = max(response.heartbeat_interval_ms / 1000, 0.2)
                return
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.NOT_FOUND,
                ):
                    raise Fatal(f"registration refused: {exc.details()}", 3) from None
                if time.monotonic() > deadline:
                    tried = ", ".join(self.settings.servers)
                    raise Fatal(f"no server reachable ({tried}): {exc.details()}", 4) from None
                say(f"cannot register with {self.server} ({code.name}: {exc.details()}); trying again")
                self._next_server()
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    # The stream ---------------------------------------------------------------

    def _send_batch(self, batch: Batch) -> None:
        self.outbox.put(self._batch_message(batch))

    def _batch_message(self, batch: Batch) -> worker_pb2.WorkerMessage:
        """Lines are added in place and their timestamps set field by field: a third of
        the cost of building each LogLine and Timestamp apart (Timestamp's helpers are
        Python code), on the thread that reads the job's output."""
        message = worker_pb2.WorkerMessage()
        log_batch = message.log_batch
        log_batch.job_id = self.settings.job_id
        log_batch.seq = batch.seq
        add = log_batch.lines.add
        for at, stream, texts, partial in batch.runs:
            kind = worker_pb2.LOG_STREAM_STDERR if stream == STDERR else worker_pb2.LOG_STREAM_STDOUT
            seconds, nanos = divmod(int(at * 1e9), 1_000_000_000)
            for text in texts:
                stamp = add(stream=kind, line=text, partial=partial).timestamp
                stamp.seconds = seconds
                stamp.nanos = nanos
        return message

    def _outgoing(self, stream_done: threading.Event) -> Iterator[worker_pb2.WorkerMessage]:
        """The stream's messages: what the outbox holds, and a heartbeat every interval,
        also while the job's output keeps the outbox busy (the usage it says stays fresh)."""
        while not stream_done.is_set():
            if time.monotonic() - self.last_beat >= self.heartbeat_interval:
                yield self._heartbeat()
                continue
            try:
                message = self.outbox.get(timeout=self.heartbeat_interval)
            except queue.Empty:
                message = self._heartbeat()
            if message is None:
                return
            yield message

    def _heartbeat(self) -> worker_pb2.WorkerMessage:
        beat = worker_pb2.Heartbeat(sent_at=_now())
        cores, memory = self.usage.sample()
        if cores is not None:
            beat.usage.cpu_cores = cores
        if memory is not None:
            beat.usage.memory_bytes = memory
        self.last_beat = time.monotonic()
        return worker_pb2.WorkerMessage(heartbeat=beat)

    def serve(self) -> None:
        """Keeps a stream open until the result is acknowledged. A lost stream is opened
        again, on the next server, with backoff: the job goes on meanwhile, its output
        waits in unacknowledged batches, and only after ``orphan_timeout`` without any
        server is the job stopped."""
        deadline = time.monotonic() + self.settings.orphan_timeout
        delay = RETRY_FIRST
        while not self.result_acked.is_set():
            stream_done = threading.Event()
            # A new stream: whatever was not acknowledged goes again.
            self.outbox = queue.Queue()
            self.outbox.put(self._heartbeat())
            for batch in self.batcher.pending():
                self.outbox.put(self._batch_message(batch))
            with self.exec_lock:
                for ended in self.exec_results.values():
                    self.outbox.put(ended)
            if self.result is not None:
                self.outbox.put(worker_pb2.WorkerMessage(result=self.result))
            metadata = (("x-hodei-worker-id", self.settings.worker_id), ("x-hodei-session", self.session))
            answered = False
            try:
                for message in self.stub.Connect(self._outgoing(stream_done), metadata=metadata):
                    answered = True
                    deadline = time.monotonic() + self.settings.orphan_timeout
                    delay = RETRY_FIRST
                    self._on_message(message)
                    if self.result_acked.is_set():
                        break
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise Fatal(f"stream refused: {exc.details()}", 3) from None
                say(f"stream to {self.server} lost ({exc.code().name}: {exc.details()}); reconnecting")
            finally:
                stream_done.set()
                self.outbox.put(None)
            if self.result_acked.is_set():
                return
            if answered:
                self.batcher.unanswered()
            if time.monotonic() > deadline:
                self._abandon_job()
                raise Fatal(f"no server reachable for {self.settings.orphan_timeout:g}s: stopped the job", 4)
            self._next_server()
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _on_message(self, message: worker_pb2.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "run_job":
            self._start(message.run_job)
        elif kind == "cancel":
            if self.process is not None:
                cancel = message.cancel
                grace = cancel.grace_ms / 1000 if cancel.HasField("grace_ms") else None
                self.process.cancel(cancel.reason or "cancelled by the server", grace)
        elif kind == "signal":
            self._signal(message.signal)
        elif kind == "exec":
            self._exec(message.exec)
        elif kind == "exec_ack":
            with self.exec_lock:
                self.exec_results.pop(message.exec_ack.index, None)
        elif kind == "log_ack":
            self.batcher.acked(message.log_ack.seq)
        elif kind == "result_ack":
            self.result_acked.set()
        elif kind == "heartbeat_ack" and message.heartbeat_ack.heartbeat_interval_ms > 0:
            self.heartbeat_interval = max(message.heartbeat_ack.heartbeat_interval_ms / 1000, 0.2)

    def _signal(self, sent: worker_pb2.Signal) -> None:
        """Each index once, said in the job's log (where its effect shows)."""
        if sent.index < self.next_signal or self.process is None or sent.job_id != self.settings.job_id:
            return
        self.next_signal = sent.index + 1
        self._on_output(STDERR, [signal_note(sent.name)], False, wait=False)  # this thread reads the acks
        signum = getattr(signal, f"SIG{sent.name}", None)
        if signum is not None:
            self.process.signal(signum)

    def _exec(self, sent: worker_pb2.Exec) -> None:
        """Each index once, on a thread of its own (this one reads the stream)."""
        if sent.job_id != self.settings.job_id or sent.index in self.execs_begun:
            return
        thread = threading.Thread(target=self._run_exec, args=(sent,), name=f"exec-{sent.index}", daemon=True)
        self.execs_begun[sent.index] = thread
        thread.start()

    def _run_exec(self, sent: worker_pb2.Exec) -> None:
        process = self.process  # None until run-job came; its command's end is beside's to see
        if process is None:
            ran = NOT_RUNNING
        else:
            ran = process.beside(list(sent.argv), sent.timeout_seconds, EXEC_OUTPUT_BYTES, self.mask)
        ended = worker_pb2.WorkerMessage(
            exec_result=worker_pb2.ExecResult(
                job_id=sent.job_id,
                index=sent.index,
                exit_code=ran.exit_code,
                message=ran.message,
                stdout=ran.stdout,
                stderr=ran.stderr,
                stdout_bytes=ran.stdout_bytes,
                stderr_bytes=ran.stderr_bytes,
            )
        )
        with self.exec_lock:
            self.exec_results[sent.index] = ended
            self.outbox.put(ended)

    # The job ------------------------------------------------------------------

    def _start(self, run: worker_pb2.RunJob) -> None:
        if run.job_id != self.settings.job_id:
            say(f"ignoring run-job for {run.job_id}: this worker belongs to {self.settings.job_id}")
            return
        # Acknowledged even when repeated (after a reconnect the first ack may be lost).
        self.outbox.put(worker_pb2.WorkerMessage(ack=worker_pb2.RunJobAck(job_id=run.job_id)))
        if self.job_thread is not None:
            return
        self.mask = Masker(run.secrets.values())
        user = self.settings.job_user
        self.home = make_home(self.settings.homes, self.settings.worker_id)
        if user is not None:
            os.chown(self.home, user.uid, user.gid)
        env = job_environment(
            run.job_id,
            self.settings.worker_id,
            run.attempt,
            self.home,
            {**self.settings.image_env, **run.env},
            run.secrets,
            self._after_outputs(run, user),
        )
        self.working_dir = run.working_dir or self.settings.image_workdir or self.home
        self.artifacts = tuple(run.artifacts)
        self.artifacts_exclude = tuple(run.artifacts_exclude)
        inputs = list(run.inputs)
        archive = run.input if run.HasField("input") else None
        self.process = JobProcess(
            argv_for(run.command, list(run.args)),
            env,
            self.working_dir,
            timeout=run.timeout_ms / 1000,
            kill_grace=self.settings.kill_grace,
            on_output=self._on_output,
            user=user,
            before=(lambda: self._fetch_inputs(archive, inputs)) if inputs or archive else None,
        )
        self.job_thread = threading.Thread(target=self._run_job, name="job", daemon=True)
        self.job_thread.start()

    def _on_output(self, stream: str, texts: list[str], partial: bool, wait: bool = True) -> None:
        if self.mask.active:
            texts, partial = self.mask.output(stream, texts, partial)
            if not texts:  # all of it held back, to be masked with what follows
                return
        if self.echo is not None:
            # A copy on our own stdout/stderr, so `docker logs` and `kubectl logs` agree with
            # the stored log (the local provider turns it off: nothing would remove it).
            self.echo.write(stream, texts, partial)
        self.batcher.add(stream, texts, partial, wait)

    def _run_job(self) -> None:
        assert self.process is not None
        finished: Finished = self.process.run()
        # Kept once the command ended by itself or by its timeout (what it left is what there
        # is to debug it by); not after a cancel or a stopped worker, which are to go.
        ended = finished.outcome in (Outcome.EXITED, Outcome.TIMED_OUT)
        stored: list[worker_pb2.StoredArtifact] = []
        outputs: dict[str, str] = {}
        try:
            stored = self._store_artifacts() if ended and self.artifacts else []
            outputs = self._read_outputs() if ended else {}
            remove_home(self.home)
            say(f"job {self.settings.job_id}: {finished.message}")
            if not self.batcher.wait_all_acked(timeout=self.settings.orphan_timeout):
                say("some log batches were never acknowledged")
            if self.batcher.lost_lines:
                say(f"{self.batcher.lost_lines} lines of output were given up after {MAX_SENDS} sends")
        except Exception as exc:  # whatever broke, the command's end is reported
            # This thread dying here left the job RUNNING, its worker beating, until its
            # timeout and margins ran out (a file name no log line could carry did it).
            say(f"job {self.settings.job_id}: after its command ended: {exc!r}")
        self.result = worker_pb2.JobResult(
            job_id=self.settings.job_id,
            outcome=_OUTCOMES[finished.outcome],
            exit_code=finished.exit_code,
            message=finished.message,
            last_log_seq=self.batcher.last_seq,
            artifacts=stored,
            outputs=outputs,
        )
        if finished.started_at is not None and finished.finished_at is not None:
            self.result.started_at.CopyFrom(_stamp(finished.started_at))
            self.result.finished_at.CopyFrom(_stamp(finished.finished_at))
        if finished.cpu_seconds is not None:
            self.result.cpu_seconds = finished.cpu_seconds
        if finished.peak_memory_bytes is not None:
            self.result.peak_memory_bytes = finished.peak_memory_bytes
        # Commands run beside it say how they ended first (the job's end killed them).
        for thread in list(self.execs_begun.values()):
            thread.join(timeout=EXEC_ENDS_WITHIN)
        self.outbox.put(worker_pb2.WorkerMessage(result=self.result))

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The worker's session, for the calls beside its stream."""
        return (("x-hodei-worker-id", self.settings.worker_id), ("x-hodei-session", self.session))

    def _fetch_inputs(
        self, archive: artifacts_pb2.Artifact | None, inputs: list[worker_pb2.InputArtifact]
    ) -> str | None:
        """Unpacks the job's own files (--input), then fetches the artifacts of the jobs it
        starts after; a problem fails its start."""
        from hodei_worker import artifacts

        until = time.monotonic() + artifacts.TRANSFER_SECONDS
        user, metadata = self.settings.job_user, self._metadata()
        if archive is not None:
            job_id, scratch = self.settings.job_id, self.settings.homes
            try:
                files, unpacked = artifacts.fetch_input(
                    lambda: self.stub, metadata, job_id, archive, self.working_dir, scratch, user, until
                )
            except (OSError, ValueError, grpc.RpcError) as exc:
                return f"cannot fetch its input files: {artifacts.fetch_problem(exc)}"
            note = f"[hodei] unpacked {artifacts.counted(files, 'input file')}, {unpacked} bytes"
            self._on_output(STDERR, [note], False)
        size = 0
        for wanted in inputs:
            what = f"artifact {wanted.artifact.name} of job {wanted.job_id}"
            try:
                size += artifacts.fetch(lambda: self.stub, metadata, wanted, self.working_dir, user, until)
            except (OSError, ValueError, grpc.RpcError) as exc:
                return f"cannot fetch {what}: {artifacts.fetch_problem(exc)}"
        if inputs:
            fetched = artifacts.counted(len(inputs), "artifact")
            jobs = artifacts.counted(len({wanted.job_id for wanted in inputs}), "job")
            notes = [f"[hodei] fetched {fetched} of {jobs} into {artifacts.FETCHED}/, {size} bytes"]
            self._on_output(STDERR, notes, False)
        return None

    def _store_artifacts(self) -> list[worker_pb2.StoredArtifact]:
        """Uploads the files the job's patterns match (imported here: most jobs have none,
        and the agent's start is kept short); what was skipped or refused is said in the
        job's log, before its result."""
        from hodei_worker import artifacts

        found = artifacts.find(self.working_dir, self.artifacts, self.settings.job_user, self.artifacts_exclude)
        notes, stored = found.notes, []
        metadata = self._metadata()
        until = time.monotonic() + artifacts.TRANSFER_SECONDS
        for index, (name, path) in enumerate(found.files.items()):
            # Past the uploads' time, or once the attempt's files are all taken
            # (RESOURCE_EXHAUSTED), none after is sent: one note says how many.
            left = len(found.files) - index - 1
            rest = f"{name} and {left} more" if left else name
            if time.monotonic() >= until:
                notes.append(f"artifact {rest} not stored: the uploads took their {artifacts.TRANSFER_SECONDS:g} s")
                break
            try:
                stored.append(artifacts.upload(lambda: self.stub, metadata, self.settings.job_id, name, path, until))
            except OSError as exc:
                notes.append(f"artifact {name} not stored: {exc.strerror}")
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    notes.append(f"artifact {rest} not stored: {artifacts.refusal(exc, 'uploads')}")
                    break
                notes.append(f"artifact {name} not stored: {artifacts.refusal(exc, 'uploads')}")
        size = sum(artifact.size_bytes for artifact in stored)
        notes.append(f"stored {artifacts.counted(len(stored), 'artifact')}, {size} bytes")
        self._on_output(STDERR, [f"[hodei] {note}" for note in notes], False)
        return stored

    def _after_outputs(self, run: worker_pb2.RunJob, user: JobUser | None) -> str:
        """The outputs of the jobs it starts after, as files in its home; "" for a job that
        starts after none (imported here: most jobs do)."""
        if not run.after_outputs and not run.after_outputs_left_out:
            return ""
        from hodei_worker import outputs

        if run.after_outputs_left_out:
            note = (
                f"[hodei] the outputs of {run.after_outputs_left_out} of the jobs it starts after are left out "
                f"of $HODEI_AFTER_OUTPUTS: the others' took the 1 MiB a job is given"
            )
            self._on_output(STDERR, [note], False)
        after = {job_id: dict(given.values) for job_id, given in run.after_outputs.items()}
        return outputs.write_after(self.home, after, user)

    def _read_outputs(self) -> dict[str, str]:
        """What the job wrote to $HODEI_OUTPUT, its secrets masked as in its log (imported
        here: most jobs write none); why none was kept is said in the job's log."""
        from hodei_worker import outputs

        found = outputs.read(os.path.join(self.home, OUTPUT_FILE), self.settings.job_user)
        if found.notes:
            self._on_output(STDERR, [f"[hodei] {note}" for note in found.notes], False)
        return {key: self.mask(value) for key, value in found.values.items()}

    def _abandon_job(self) -> None:
        if self.process is not None:
            self.process.cancel("the server is unreachable")

    def close(self) -> None:
        self.batcher.close()
        if self.channel is not None:
            self.channel.close()

    def terminate(self) -> None:
        """SIGTERM: stop the job gracefully and report; with no job running, just go."""
        if self.process is None or self.result is not None:
            os._exit(143)
        self.process.interrupt(Outcome.WORKER_STOPPED, "the worker was stopped (SIGTERM) before the job ended")


def keep_open_files() -> None:
    """The local provider's server raises its own limit of open files to the hard one (its
    workers' sockets) and gives the soft one it was started with: the job has that, as it
    would have had run by hand, not a limit some programs walk whole (closing every fd)."""
    value = os.environ.get("HODEI_OPEN_FILES", "")
    if value.isdigit():
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(int(value), hard), hard))


def main() -> None:
    hide_from_jobs()
    become_subreaper()
    keep_open_files()
    try:
        settings = Settings.from_env()
        agent = Agent(settings)
        signal.signal(signal.SIGTERM, lambda *_: agent.terminate())
        agent.register()
        agent.serve()
        agent.close()
    except Fatal as exc:
        say(str(exc))
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
