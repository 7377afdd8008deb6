"""Workers that never register say why: the job's error quotes the worker's own last
output and names the address it was told to dial; HODEI_KEEP_FAILED_WORKERS keeps a
failed container for `docker logs`, until the reconciler removes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1


def failed_job(server: ServerProcess, provider: str) -> tuple[str, str]:
    result = server.cli("job", "run", "--provider", provider, "--command", "echo never", "--wait")
    assert result.returncode == 125, result.stderr  # the platform's failure, not the job's
    job_id = result.stdout.strip()
    wait_settled(server.database_url, job_id, 90)
    ((state, error),) = query(server.database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))
    assert state == "FAILED"
    return job_id, error


def worker_containers(docker_client: Any, job_id: str) -> list[Any]:
    found: list[Any] = docker_client.containers.list(all=True, sparse=True, filters={"label": f"hodei.job-id={job_id}"})
    return found


@pytest.mark.docker
def test_a_docker_worker_dialling_nowhere_says_so_and_is_kept_for_inspection(
    fresh_database_url: str, tmp_path: Path, worker_image: str, docker_client: Any
) -> None:
    env = {
        "HODEI_DOCKER_ENABLED": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_WORKER_IMAGE": worker_image,
        "HODEI_SERVER_HOST": UNREACHABLE,
        "HODEI_REGISTRATION_TIMEOUT": "6",
        "HODEI_KEEP_FAILED_WORKERS": "8",
        "HODEI_RECONCILE_INTERVAL": "1",
    }
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        job_id, error = failed_job(server, "docker")
        assert "the worker did not register within 6s" in error
        assert f"it was told to dial {UNREACHABLE} (HODEI_SERVER_HOST)" in error
        # Its own last line: the agent could not reach that address.
        assert f"cannot register with {UNREACHABLE}" in error.rsplit("its last output:", 1)[1]
        (kept,) = worker_containers(docker_client, job_id)
        assert f"cannot register with {UNREACHABLE}" in kept.logs().decode()
        eventually(lambda: worker_containers(docker_client, job_id) == [], 60, what="the kept container to go")
        assert query(fresh_database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]


def test_a_local_worker_that_exits_at_once_quotes_its_output(fresh_database_url: str, tmp_path: Path) -> None:
    broken = "/bin/sh -c 'echo the agent is broken: missing module >&2; exit 3'"
    env = {"HODEI_DOCKER_ENABLED": "0", "HODEI_LOCAL_WORKER_COMMAND": broken, "HODEI_KEEP_FAILED_WORKERS": "30"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        _, error = failed_job(server, "local")
    assert "failed before registering" in error
    assert "exited with code 3" in error
    assert "its last output: the agent is broken: missing module" in error
    assert f"it was told to dial {server.address} (HODEI_SERVER_HOST)" in error
