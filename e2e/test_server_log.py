"""The server's own log as a collector reads it (HODEI_LOG_FORMAT=json): an object a line,
and one job's records found by its id, whether a worker's call, the sweeper or a saga's
step wrote them; HODEI_LOG_LEVEL leaves out the records below it."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hodei.testing import BIN, ServerProcess, query, wait_running, wait_settled, wait_terminal

pytestmark = pytest.mark.e2e

KEYS = {"time", "level", "logger", "thread", "message"}


def records(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's output, each a JSON object with the keys every record has."""
    found = []
    for line in server.logs().splitlines():
        record = json.loads(line)
        assert set(record) >= KEYS, line
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        found.append(record)
    return found


def about_job(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    return [record for record in records(server) if record.get("job_id") == job_id]


@pytest.mark.docker
def test_a_jobs_records_carry_its_id_wherever_they_were_written(
    fresh_database_url: str, tmp_path: Path, worker_image: str, docker_client: Any
) -> None:
    env = {
        "HODEI_LOG_FORMAT": "json",
        "HODEI_DOCKER_ENABLED": "1",
        "HODEI_WORKER_IMAGE": worker_image,
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "3",
        "HODEI_KEEP_FAILED_WORKERS": "1",
    }
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        lost = server.cli("job", "run", "--provider", "docker", "-c", "sleep 300", check=True).stdout.strip()
        unpulled = server.cli("job", "run", "--image", "nosuch.invalid/none:1", "-c", "true").stdout.strip()
        wait_running(fresh_database_url, lost, 60)
        (container,) = docker_client.containers.list(filters={"label": f"hodei.job-id={lost}"})
        container.kill()
        assert wait_terminal(fresh_database_url, lost, 30) == "FAILED"
        assert wait_terminal(fresh_database_url, unpulled, 60) == "FAILED"
        wait_settled(fresh_database_url, lost)
        wait_settled(fresh_database_url, unpulled)
    ((worker_id,),) = query(fresh_database_url, "SELECT id::text FROM workers WHERE job_id = %s", (lost,))
    # The worker's registration, written in its call, and its loss, by the sweeper.
    mine = {record["message"].split(":")[0]: record for record in about_job(server, lost)}
    registered = mine[f"worker {worker_id} registered for job {lost}"]
    assert (registered["level"], registered["worker_id"]) == ("INFO", worker_id)
    assert registered["rpc"] == "WorkerAgentService.Register"
    gone = mine[f"worker {worker_id} of job {lost} is lost"]
    assert (gone["level"], gone["logger"], gone["worker_id"]) == ("WARNING", "hodei.sweeper", worker_id)
    # The failed start's container kept for inspection: said by a saga's compensation,
    # in the thread of the step's action, delivered by the relay.
    ((saga_id,),) = query(
        fresh_database_url,
        "SELECT id::text FROM sagas WHERE correlation_id = %s AND saga_type = 'PROVISIONING'",
        (unpulled,),
    )
    (kept,) = about_job(server, unpulled)
    assert kept["message"].startswith("keeping worker ")
    assert kept["message"].endswith(f" of job {unpulled} for 1s for inspection")
    assert (kept["saga_id"], kept["event"]) == (saga_id, "CompensationStarted")
    assert kept["logger"] == "hodei.sagas.provisioning"
    assert kept["thread"].startswith("hodei-step")


def test_records_below_the_level_are_left_out(fresh_database_url: str, tmp_path: Path) -> None:
    env = {"HODEI_LOG_FORMAT": "json", "HODEI_LOG_LEVEL": "warning"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        job_id = server.cli("job", "run", "--provider", "local", "-c", "true", "--wait", check=True).stdout.strip()
        assert query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
    assert [record for record in records(server) if record["level"] in ("DEBUG", "INFO")] == []
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOG_FORMAT": "json"}) as talkative:
        pass
    assert any(record["message"].startswith("Serving hodei.jobs on ") for record in records(talkative))


def test_a_refusal_to_start_is_a_record_of_the_logs_format(fresh_database_url: str, tmp_path: Path) -> None:
    server = ServerProcess(fresh_database_url, tmp_path)

    def refused(**env: str) -> str:
        result = subprocess.run(
            [str(BIN / "hodei-server")], capture_output=True, text=True, env={**server.env, **env}, timeout=60
        )
        assert result.returncode == 78, result.stdout + result.stderr  # misconfigured
        return result.stderr

    (line,) = refused(HODEI_LOG_FORMAT="json", HODEI_DB_MAX_CONNECTIONS="8").splitlines()
    record = json.loads(line)
    assert record["level"] == "CRITICAL"
    assert record["message"].startswith("HODEI_DB_MAX_CONNECTIONS must be at least 16, got `8`: ")
    said = refused(HODEI_LOG_FORMAT="xml")
    assert said == "hodei-server: HODEI_LOG_FORMAT must be one of text, json, got `xml`\n"
    said = refused(HODEI_LOG_LEVEL="loud")
    assert said == "hodei-server: HODEI_LOG_LEVEL must be one of debug, info, warning, error, got `loud`\n"
