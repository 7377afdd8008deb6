"""Helpers for Hodei's own tests and benchmarks: real server processes, the CLI as a
subprocess, waiting on the database. Not used by the server itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.devdb import free_port

T = TypeVar("T")
BIN = Path(sys.executable).parent


def docker_client_or_skip() -> Any:
    """A Docker SDK client, or a skip (a failure with HODEI_REQUIRE_DOCKER=1)."""
    import pytest

    required = os.environ.get("HODEI_REQUIRE_DOCKER") == "1"
    try:
        import docker

        client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=10)
        client.ping()
        return client
    except Exception as exc:
        reason = f"no Docker engine reachable ({type(exc).__name__}: {exc})"
        if required:
            pytest.fail(f"HODEI_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)


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


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs one statement; its rows, or [] for a statement without any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params)
        return cursor.fetchall() if cursor.description is not None else []


class Cli:
    """``hodei-jobs-cli`` against one server, as a subprocess."""

    def __init__(self, address: str) -> None:
        self.address = address

    def cli(self, *args: str, timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "hodei-jobs-cli"), "--server", self.address, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hodei-jobs-cli {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


class ServerProcess(Cli):
    """``hodei-server`` as a child process on a free port."""

    def __init__(self, database_url: str, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__(f"127.0.0.1:{self.port}")
        self.database_url = database_url
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HODEI_GRPC_PORT": str(self.port),
            "HODEI_GRPC_BIND": "127.0.0.1",
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
            self.process = subprocess.Popen([str(BIN / "hodei-server")], env=self.env, stdout=output, stderr=output)
        channel = grpc.insecure_channel(self.address)
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

    def logs(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

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


def wait_terminal(database_url: str, job_id: str, timeout: float = 60.0) -> str:
    terminal = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}

    def state() -> str | None:
        rows = query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,))
        return rows[0][0] if rows and rows[0][0] in terminal else None

    return eventually(state, timeout, what=f"job {job_id} to end")


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
            "SELECT count(*) FROM jobs WHERE id = %s AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')",
            (job_id,),
        )[0][0]
        return bool(ended) and open_sagas == 0

    eventually(settled, timeout, what=f"job {job_id} and its sagas to finish")
