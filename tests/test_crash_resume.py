"""kill -9 between every pair of steps: a restart finishes every saga as if nothing
happened, and no side effect runs twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from hodei.testing import query

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "select_provider",
    "wait_for_slot",
    "register_worker",
    "create_worker",
    "wait_for_registration",
    "assign_worker",
    "dispatch_job",
    "wait_for_acceptance",
    "wait_for_result",
    "persist_logs",
    "release_worker",
]


def run(url: str, workdir: Path, job_id: str, crash_after: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.saga_process", url, str(workdir), job_id]
    return subprocess.run(
        [*command, *([crash_after] if crash_after else [])], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def outcome(url: str, job_id: str) -> dict[str, object]:
    return {
        "job": query(url, "SELECT state, exit_code, error_message FROM jobs WHERE id = %s", (job_id,)),
        "sagas": query(
            url, "SELECT saga_type, state, error_message FROM sagas WHERE correlation_id = %s ORDER BY 1", (job_id,)
        ),
        "steps": query(
            url,
            "SELECT s.saga_type, st.step_order, st.step_name, st.state, st.retry_count FROM saga_steps st "
            "JOIN sagas s ON s.id = st.saga_id WHERE s.correlation_id = %s ORDER BY 1, 2",
            (job_id,),
        ),
        "workers": query(url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)),
        "job events": [
            row[0]
            for row in query(
                url, "SELECT event_type FROM domain_events WHERE aggregate_id = %s ORDER BY position", (job_id,)
            )
        ],
    }


@pytest.fixture(scope="module")
def undisturbed(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    workdir = tmp_path_factory.mktemp("undisturbed")
    job_id = str(uuid4())
    result = run(database_url, workdir, job_id)
    assert result.returncode == 0, result.stderr
    return outcome(database_url, job_id)


@pytest.mark.parametrize("crash_after", STEPS)
def test_kill_9_after_a_step_then_restart(
    database_url: str, tmp_path: Path, undisturbed: dict[str, object], crash_after: str
) -> None:
    job_id = str(uuid4())
    crashed = run(database_url, tmp_path, job_id, crash_after)
    assert crashed.returncode == -9, f"expected SIGKILL after {crash_after}: {crashed.stderr}"
    assert (tmp_path / "crashed").read_text() == crash_after
    restarted = run(database_url, tmp_path, job_id)
    assert restarted.returncode == 0, restarted.stderr
    assert outcome(database_url, job_id) == undisturbed
    effects = (tmp_path / "effects.log").read_text().splitlines()
    (worker,) = {line.split()[1] for line in effects}
    assert sorted(effects) == sorted(
        [f"call-create {worker}", f"create {worker}", f"call-destroy {worker}", f"destroy {worker}"]
    )
