"""`just dev` beside another PostgreSQL on port 5432, and `just down` after it: the
developer set-up of the README, run as a developer runs it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei.devdb import free_port, port_open
from hodei.testing import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def port_5432_taken() -> Iterator[None]:
    """Something else listens on 5432 (unless something already does)."""
    if port_open(5432):
        yield
        return
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 5432))
        other.listen()
        yield


def just(env: dict[str, str], *recipes: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "just"), *recipes], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_just_dev_follows_database_url_and_just_down_stops_it_all(
    tmp_path: Path, shared_dir: Path, worker_image: str
) -> None:
    db_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres:postgres@127.0.0.1:{db_port}/hodei_jobs",
        # The cluster's files belong to the postgres user: a directory it can reach.
        "HODEI_DEV_DIR": str(shared_dir / "dev"),
        "HODEI_SERVER_LOG": str(tmp_path / "server.log"),
        "HODEI_GRPC_PORT": str(grpc_port),
        "HODEI_WORKER_IMAGE": worker_image,
    }
    env.pop("HODEI_DEV_DB_PORT", None)
    try:
        with port_5432_taken():
            started = just(env, "dev")
            assert started.returncode == 0, started.stdout + started.stderr
            assert port_open(db_port)
            command = ["job", "run", "--provider", "local", "--command", "echo dev works", "--follow"]
            ran = subprocess.run(
                [str(BIN / "hodei-jobs-cli"), "--server", f"127.0.0.1:{grpc_port}", *command],
                capture_output=True,
                text=True,
                timeout=120,
                env={**env, "HODEI_CONFIG": "/nonexistent"},
            )
            assert ran.returncode == 0, ran.stderr
            assert ran.stdout == "dev works\n"
    finally:
        stopped = just(env, "down")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not port_open(db_port)
    assert not port_open(grpc_port)
    assert not (shared_dir / "dev" / "server.pid").exists()
