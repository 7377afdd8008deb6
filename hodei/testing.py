"""Helpers for Hodei's own tests and benchmarks: real server processes, the CLI as a
subprocess, waiting on the database. Not used by the server itself."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import docker
import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg_pool import ConnectionPool

from hodei.devdb import free_port
from hodei.domain.job import TERMINAL_STATES

T = TypeVar("T")
BIN = Path(sys.executable).parent


def docker_client_or_skip() -> Any:
    """A Docker SDK client, or a skip (a failure with HODEI_REQUIRE_DOCKER=1)."""
    import pytest

    required = os.environ.get("HODEI_REQUIRE_DOCKER") == "1"
    try:
        client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=10)
        client.ping()
        return client
    except Exception as exc:
        reason = f"no Docker engine reachable ({type(exc).__name__}: {exc})"
        if required:
            pytest.fail(f"HODEI_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)


# A job's own image (`job run --image`) with nothing of ours and no Python: busybox alone,
# with an environment, a working directory and a user of its own.
BARE_IMAGE = "hodei-test-bare:latest"
BARE_MARKER = "only in the bare image"
BARE_USER = 4242
BARE_SOURCE_LABEL = "io.hodei.test.built-from"


def build_bare_image(docker_client: Any, worker_image: str) -> str:
    """``BARE_IMAGE``, built from the worker image's static busybox with ``docker import`` (no registry).
    Built again only when the worker image changed (its id in a label), and the build it
    replaces is removed: every run left one more untagged image in an engine that keeps
    its images between runs."""
    source = docker_client.images.get(worker_image).id
    try:
        built = docker_client.images.get(BARE_IMAGE)
    except docker.errors.ImageNotFound:
        built = None
    if built is not None and built.labels.get(BARE_SOURCE_LABEL) == source:
        return BARE_IMAGE
    container = docker_client.containers.create(worker_image, entrypoint=["true"])
    try:
        pieces, _ = container.get_archive("/bin/busybox")
        with tarfile.open(fileobj=io.BytesIO(b"".join(pieces))) as packed:
            member = packed.extractfile("busybox")
            assert member is not None
            busybox = member.read()
    finally:
        container.remove(force=True)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:

        def add(name: str, data: bytes = b"", mode: int = 0o644, kind: bytes = tarfile.REGTYPE, **more: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.type = len(data), mode, kind
            for key, value in more.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("bin", mode=0o755, kind=tarfile.DIRTYPE)
        add("bin/busybox", busybox, 0o755)
        for applet in ("sh", "cat", "echo", "id", "pwd", "sleep", "ls", "env", "head"):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, linkname="busybox")
        add("tmp", mode=0o1777, kind=tarfile.DIRTYPE)
        add("data", mode=0o755, kind=tarfile.DIRTYPE, uid=BARE_USER, gid=BARE_USER)
        add("marker", f"{BARE_MARKER}\n".encode())
    repository, _, tag = BARE_IMAGE.partition(":")
    changes = [
        "ENV PATH=/bin GREETING=from-the-image",
        "WORKDIR /data",
        f"USER {BARE_USER}",
        f"LABEL {BARE_SOURCE_LABEL}={source}",
    ]
    docker_client.api.import_image_from_data(archive.getvalue(), repository=repository, tag=tag, changes=changes)
    if built is not None:
        with contextlib.suppress(docker.errors.APIError):  # still a container's: left
            docker_client.images.remove(built.id)
    return BARE_IMAGE


class Link:
    """A socket hop between a client and its server that a test cuts and restores: to the
    client, the server (a Docker engine's unix socket, a Kubernetes API's port) is gone,
    then back, while the server itself runs on for everyone else. ``target`` is a unix
    socket's path or a (host, port); the link listens on ``path`` (unix) or a free
    loopback port (``url_host``: ``127.0.0.1:<port>``)."""

    def __init__(self, target: str | tuple[str, int], path: Path | None = None) -> None:
        self.target = target
        self.path = path
        self.port = 0 if path is not None else free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _socket(self) -> socket.socket:
        return socket.socket(socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET)

    def up(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(self.path))
        else:
            listener = socket.socket(socket.AF_INET)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        # Each socket shut before it is closed: a close alone, while a thread waits on the
        # socket (in accept(), in recv()), leaves it open: the port still listening (an up()
        # soon after found it in use), the connection silent but never ended for its client.
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for connection in self._open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._open.clear()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = self._socket()
            server.connect(self.target)
            self._open += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def eventually(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Polls ``check`` until it returns something truthy; fails with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value: {last!r}")


def spy(function: Callable[..., T], calls: list[Any], noted: Callable[..., Any] | None = None) -> Callable[..., T]:
    """``function``, noting in ``calls`` each call's first argument (or what ``noted``
    makes of its arguments) before it runs: how a test counts what a store reads."""

    def call(*args: Any, **kwargs: Any) -> T:
        calls.append(noted(*args, **kwargs) if noted is not None else args[0])
        return function(*args, **kwargs)

    return call


def conninfo(pool: ConnectionPool) -> str:
    """The database a pool connects to, for a test's own connection to it (psycopg_pool
    also takes a function that returns one; ours are opened on the string)."""
    info = pool.conninfo
    return info if isinstance(info, str) else info()


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs one statement; its rows, or [] for a statement without any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params)
        return cursor.fetchall() if cursor.description is not None else []


def refuse_new_sagas(url: str) -> None:
    """A trigger refuses every new saga row: deliveries that start sagas fail until
    ``allow_new_sagas`` (how tests make dead letters)."""
    query(
        url,
        "CREATE FUNCTION refuse_sagas() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'sagas are refused by the test'; END; $$",
    )
    query(url, "CREATE TRIGGER refuse_sagas BEFORE INSERT ON sagas FOR EACH ROW EXECUTE FUNCTION refuse_sagas()")


def allow_new_sagas(url: str) -> None:
    query(url, "DROP TRIGGER refuse_sagas ON sagas")


@contextlib.contextmanager
def every_race_lost(url: str, job_id: str, change: str) -> Iterator[None]:
    """While inside, every write to the job's row that makes ``change`` (a condition on
    its OLD and NEW) fails as a write that lost its race to another writer does: another
    writer that always comes first."""
    query(
        url,
        "CREATE FUNCTION lose_every_race() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE unique_violation USING CONSTRAINT = 'domain_events_aggregate_version_key', "
        "DETAIL = 'a writer of the test came first'; END $$",
    )
    query(
        url,
        f"CREATE TRIGGER lose_every_race BEFORE UPDATE ON jobs FOR EACH ROW "
        f"WHEN (NEW.id = '{UUID(job_id)}' AND {change}) EXECUTE FUNCTION lose_every_race()",
    )
    try:
        yield
    finally:
        query(url, "DROP TRIGGER lose_every_race ON jobs; DROP FUNCTION lose_every_race()")


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, days: int = 2) -> Pki:
    """Generates the CA and certificates with ``cryptography``: no openssl, no network."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("hodei test CA"))
        .issuer_name(name("hodei test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = write("ca", ca_cert, ca_key)

    def leaf(common: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return write(common, builder.sign(ca_key, hashes.SHA256()), key)

    server_cert, server_key = leaf(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(ca_path, server_cert, server_key, client_cert, client_key)


def hodei_server(database_url: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """A `hodei-server` command (replay, migrate, token, secrets) as an operator runs it."""
    return subprocess.run(
        [str(BIN / "hodei-server"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": database_url},
        timeout=timeout,
    )


class Cli:
    """``hodei-jobs-cli`` against one server, as a subprocess. ``options`` go before the
    command: a token, TLS files."""

    def __init__(self, address: str, options: tuple[str, ...] = ()) -> None:
        self.address = address
        self.options = options

    def cli(self, *args: str, timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._command(args), capture_output=True, text=True, timeout=timeout, env=self._environment()
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hodei-jobs-cli {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def cli_bytes(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        """``cli``, its output as the bytes printed (``job exec`` prints what a command did)."""
        return subprocess.run(self._command(args), capture_output=True, timeout=timeout, env=self._environment())

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """``hodei-jobs-cli`` left running (a follower, a watcher), its output in pipes."""
        return subprocess.Popen(
            self._command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._environment()
        )

    def _command(self, args: tuple[str, ...]) -> list[str]:
        return [str(BIN / "hodei-jobs-cli"), "--server", self.address, *self.options, *args]

    @staticmethod
    def _environment() -> dict[str, str]:
        return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "HODEI_CONFIG": "/nonexistent/hodei.toml"}

    def logged(self, job_id: str, text: str, times: int = 1) -> str:
        """Waits until `job logs` shows ``text`` ``times`` times (on its stdout: the command's
        stdout; on its stderr: the command's stderr and the worker's notes); returns both."""

        def found() -> str | None:
            printed = self.cli("job", "logs", job_id, check=True)
            shown = printed.stdout + printed.stderr
            return shown if shown.count(text) >= times else None

        return eventually(found, 60, what=f"{text!r} {times} times in the job's log")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command's name, in parentheses, may hold spaces: the parent's pid follows it.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class ServerProcess(Cli):
    """``hodei-server`` as a child process on a free port."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        tls: Pki | None = None,
        token: str | None = None,
        http: bool = False,
        program: Path = BIN / "hodei-server",
        base: Mapping[str, str] | None = None,
    ) -> None:
        """``http``: serve the web console and /metrics on a free port too (off otherwise,
        so that servers in tests do not compete for HODEI_HTTP_PORT's default). ``program``:
        another installation's server; ``base``: the environment beneath the test's settings
        (default: the test's own)."""
        self.port = free_port()
        self.http_port = free_port() if http else 0
        self.tls = tls
        options: tuple[str, ...] = ()
        if tls is not None:
            options += ("--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key))
        if token is not None:
            options += ("--token", token)
        super().__init__(f"127.0.0.1:{self.port}", options)
        self.database_url = database_url
        self.log_dir = log_dir
        self.program = program
        self.env = {
            **(os.environ if base is None else base),
            "DATABASE_URL": database_url,
            "HODEI_GRPC_PORT": str(self.port),
            "HODEI_GRPC_BIND": "127.0.0.1",
            "HODEI_HTTP_PORT": str(self.http_port),
            "HODEI_SERVER_HOST": "127.0.0.1",
            "HODEI_DOCKER_ENABLED": "0",
            "HODEI_LOCAL_ENABLED": "1",
            "HODEI_LOG_DIR": str(log_dir),
            **(env or {}),
        }
        self.output = log_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.output.open("ab") as output:
            self.process = subprocess.Popen([str(self.program)], env=self.env, stdout=output, stderr=output)
        channel = self.channel()
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"hodei-server exited with {self.process.returncode}:\n{self.logs()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    time.sleep(0.05)
        finally:
            channel.close()
        raise RuntimeError(f"hodei-server did not start within {timeout}s:\n{self.logs()}")

    def channel(self) -> grpc.Channel:
        """A channel to this server as a trusted client (with the client certificate under TLS)."""
        if self.tls is None:
            return grpc.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.client_key.read_bytes(), self.tls.client_cert.read_bytes()
        )
        return grpc.secure_channel(self.address, credentials)

    @property
    def http_url(self) -> str:
        """Where the web console answers (``http=True``)."""
        assert self.http_port, "this server was started without its HTTP port (http=True)"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    def logs(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def sim_fleet(self) -> int | None:
        """The pid of this server's simulated fleet process, while it runs."""
        assert self.process is not None
        for pid in children(self.process.pid):
            with contextlib.suppress(OSError):
                if b"hodei.providers.sim" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> ServerProcess:
        """A new server process on the same port, database and settings."""
        self.stop()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_running(database_url: str, job_id: str, timeout: float = 30.0) -> None:
    eventually(
        lambda: query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)],
        timeout,
        what=f"job {job_id} to be RUNNING",
    )


def wait_terminal(database_url: str, job_id: str, timeout: float = 60.0) -> str:
    def state() -> str | None:
        rows = query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,))
        return rows[0][0] if rows and rows[0][0] in TERMINAL_STATES else None

    return eventually(state, timeout, what=f"job {job_id} to end")


def job_states(database_url: str, job_ids: list[str]) -> dict[str, str]:
    """Each job's state, by id."""
    return dict(query(database_url, "SELECT id::text, state FROM jobs WHERE id = ANY(%s::uuid[])", (job_ids,)))


def wait_all(database_url: str, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Each job's state, once every one has ended."""

    def ended() -> dict[str, str] | None:
        found = job_states(database_url, job_ids)
        return found if len(found) == len(job_ids) and all(s in TERMINAL_STATES for s in found.values()) else None

    return eventually(ended, timeout, 0.5, "every job to end")


def worker_ended_because(database_url: str, job_id: str) -> str:
    """The reason its (one) worker's ``WorkerTerminated`` event gives."""
    ((reason,),) = query(
        database_url,
        "SELECT e.payload->>'reason' FROM domain_events e JOIN workers w ON w.id::text = e.aggregate_id "
        "WHERE w.job_id = %s AND e.event_type = 'WorkerTerminated'",
        (job_id,),
    )
    return str(reason)


def wait_settled(database_url: str, job_id: str, timeout: float = 60.0) -> None:
    """The job ended and none of its sagas is still running."""

    def settled() -> bool:
        open_sagas = query(
            database_url,
            "SELECT count(*) FROM sagas WHERE correlation_id = %s AND state IN ('IN_PROGRESS', 'COMPENSATING')",
            (job_id,),
        )[0][0]
        ended = query(
            database_url,
            "SELECT count(*) FROM jobs WHERE id = %s AND state = ANY(%s)",
            (job_id, list(TERMINAL_STATES)),
        )[0][0]
        return bool(ended) and open_sagas == 0

    eventually(settled, timeout, what=f"job {job_id} and its sagas to finish")


# What ``add_history`` copies: each table's columns that hold an id, and how a copy's is
# made (the others are copied as they are). A copy's ids are md5(old id, copy number).
_COPY_ID = "md5({}::text || ':' || copy.n)::uuid"
_HISTORY: dict[str, dict[str, str]] = {
    "jobs": {
        "id": _COPY_ID.format("x.id"),
        "correlation_id": _COPY_ID.format("x.correlation_id") + "::text",
        "worker_id": _COPY_ID.format("x.worker_id"),
    },
    "workers": {"id": _COPY_ID.format("x.id"), "job_id": _COPY_ID.format("x.job_id")},
    "sagas": {"id": _COPY_ID.format("x.id"), "correlation_id": _COPY_ID.format("x.correlation_id") + "::text"},
    "saga_steps": {"id": _COPY_ID.format("x.id"), "saga_id": _COPY_ID.format("x.saga_id")},
    "saga_audit_events": {"id": _COPY_ID.format("x.id"), "saga_id": _COPY_ID.format("x.saga_id")},
    "job_log_files": {"id": _COPY_ID.format("x.id"), "job_id": _COPY_ID.format("x.job_id")},
    "domain_events": {
        "id": _COPY_ID.format("x.id"),
        "aggregate_id": _COPY_ID.format("x.aggregate_id") + "::text",
        "correlation_id": _COPY_ID.format("x.correlation_id") + "::text",
        "position": "x.position + copy.n * log.size",
    },
    "outbox_events": {
        "id": _COPY_ID.format("x.id"),
        "aggregate_id": _COPY_ID.format("x.aggregate_id") + "::text",
        "position": "x.position + copy.n * log.size",
        "origin": "x.origin + copy.n * log.size",
    },
}
HISTORY_TABLES = tuple(_HISTORY)


def add_history(url: str, copies: int) -> None:
    """Gives a database a past: every job it holds, copied ``copies`` times under new ids,
    with its events, its handled outbox rows and its read-model rows. What a deployment
    has after a while, made in seconds, so that tests and benchmarks can ask whether the
    cost of a new job grows with the jobs before it. Foreign keys are not checked (the
    copies are consistent among themselves); the statistics are refreshed at the end.
    Payloads keep their originals' ids: not a log to replay (``bench.scale`` copies the
    log for that, renaming them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(b"CREATE TEMP TABLE copy AS SELECT generate_series(1, %s) AS n", (copies,))
        conn.execute("CREATE TEMP TABLE log AS SELECT coalesce(max(position), 0) + 1 AS size FROM domain_events")
        for table, ids in _HISTORY.items():
            columns = [
                name
                for (name,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
            ]
            values = ", ".join(ids.get(column, f"x.{column}") for column in columns)
            handled = " WHERE x.status = 'PUBLISHED'" if table == "outbox_events" else ""
            source = f"FROM {table} x, copy, log{handled}"
            conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} {source}".encode())
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('domain_events', 'position'), max(position)) FROM domain_events"
        )
        conn.execute("VACUUM ANALYZE")
