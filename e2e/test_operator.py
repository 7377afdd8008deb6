"""The operator's view end to end: `job describe`, `saga list|show` and the phases of
`job get`, checked against the rows of sagas, saga_steps and saga_audit_events (what
the seed's step 6.7 reads with SQL)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.test_local import agent_pid, wait_running
from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "3",
        "HODEI_KILL_GRACE": "1",
        "HODEI_LOCAL_MAX_WORKERS": "1",
    }
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process
    print(process.logs()[-5000:])


def run(server: ServerProcess, *args: str) -> str:
    return server.cli("job", "run", "--provider", "local", *args, check=True).stdout.strip()


def described(server: ServerProcess, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(server.cli("job", "describe", job_id, "-o", "json", check=True).stdout)
    return data


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_matches_the_rows(url: str, job_id: str, shown: dict[str, Any]) -> None:
    """Every saga, step and audit entry the seed's 6.7 queries return, and nothing else."""
    sagas = query(
        url,
        "SELECT id::text, saga_type, state, attempt, error_message, started_at, completed_at "
        "FROM sagas WHERE correlation_id = %s ORDER BY started_at, id",
        (job_id,),
    )
    assert [saga["id"] for saga in shown["sagas"]] == [row[0] for row in sagas]
    for saga, (saga_id, saga_type, state, attempt, error, started, completed) in zip(
        shown["sagas"], sagas, strict=True
    ):
        assert (saga["saga_type"], saga["state"], saga["attempt"]) == (saga_type, state, attempt)
        assert saga["error_message"] == (error or "")
        assert (_at(saga["started_at"]), _at(saga["completed_at"])) == (started, completed)
        assert saga["duration_seconds"] == pytest.approx((completed - started).total_seconds(), abs=1e-3)
        steps = query(
            url,
            "SELECT step_name, state, retry_count, error_message, started_at, completed_at "
            "FROM saga_steps WHERE saga_id = %s ORDER BY step_order",
            (saga_id,),
        )
        assert [
            (s["name"], s["state"], s["retry_count"], s["error_message"] or None, _at(s["started_at"]))
            for s in saga["steps"]
        ] == [row[:5] for row in steps]
        for step, row in zip(saga["steps"], steps, strict=True):
            assert step["compensated"] == (row[1] in ("COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"))
            if row[4] is not None and row[5] is not None:
                assert step["duration_seconds"] == pytest.approx((row[5] - row[4]).total_seconds(), abs=1e-3)
        audit = query(
            url,
            "SELECT event_type, step_name, message, occurred_at FROM saga_audit_events "
            "WHERE saga_id = %s ORDER BY occurred_at, id",
            (saga_id,),
        )
        assert [
            (a["event_type"], a["step_name"] or None, a["message"], _at(a["occurred_at"])) for a in saga["audit"]
        ] == audit


def phases(shown: dict[str, Any]) -> list[tuple[str, int]]:
    return [(phase["name"], phase["attempt"]) for phase in shown["job"]["phases"]]


def test_describe_shows_what_the_saga_tables_hold(server: ServerProcess, shared_dir: Path) -> None:
    url = server.database_url
    # Recovered after its worker was killed, then failing in execution on its second attempt.
    marker = shared_dir / "first-attempt"
    recovered = run(
        server,
        "--max-attempts",
        "2",
        "--command",
        f"if [ -e {marker} ]; then echo second; exit 3; fi; touch {marker}; sleep 300",
    )
    wait_running(url, recovered)
    os.kill(agent_pid(recovered), signal.SIGKILL)
    wait_settled(url, recovered, 90)
    # Cancelled while running; it holds the only slot, so the next one fails provisioning.
    cancelled = run(server, "--command", "sleep 300")
    wait_running(url, cancelled)
    queued_out = run(server, "--command", "true", "--queue-timeout", "1")
    wait_settled(url, queued_out, 60)
    server.cli("job", "cancel", cancelled, check=True)
    wait_settled(url, cancelled, 60)
    succeeded = run(server, "--command", "echo fine")
    wait_settled(url, succeeded, 60)

    for job_id in (recovered, cancelled, queued_out, succeeded):
        assert_matches_the_rows(url, job_id, described(server, job_id))

    shown = described(server, recovered)
    assert shown["job"]["state"] == "FAILED"
    assert shown["job"]["exit_code"] == 3
    types = [(saga["saga_type"], saga["attempt"]) for saga in shown["sagas"]]
    assert ("RECOVERY", 1) in types
    assert ("PROVISIONING", 2) in types
    assert ("EXECUTION", 2) in types
    assert [w["attempt"] for w in shown["workers"]] == [1, 2]
    assert ("requeued", 1) in phases(shown)
    assert ("started", 2) in phases(shown)
    assert phases(shown)[0] == ("queued", 1)
    assert ("finished", 2) in phases(shown)

    failed_provisioning = described(server, queued_out)
    assert failed_provisioning["job"]["state"] == "FAILED"
    (provisioning,) = failed_provisioning["sagas"]
    assert provisioning["state"] == "FAILED"
    failing = [step for step in provisioning["steps"] if step["state"] == "FAILED"]
    assert [step["name"] for step in failing] == ["wait_for_slot"]
    assert any(step["compensated"] for step in provisioning["steps"])
    assert failed_provisioning["workers"] == []

    done = described(server, succeeded)
    names = [name for name, _ in phases(done)]
    assert names[:2] == ["queued", "provider_chosen"]
    assert {"admitted", "worker_created", "registered", "started", "finished", "logs_stored"} <= set(names)
    eventually(lambda: "worker_released" in [name for name, _ in phases(described(server, succeeded))], 30)
    # `job get -o json` carries the same phases.
    got = json.loads(server.cli("job", "get", succeeded, "-o", "json", check=True).stdout)
    assert [p["name"] for p in got["phases"]][: len(names)] == names


def test_saga_list_and_show_answer_the_seed_queries(server: ServerProcess) -> None:
    url = server.database_url
    job_id = run(server, "--command", "echo listed", "--wait")
    wait_settled(url, job_id, 60)
    listed = json.loads(server.cli("saga", "list", "--job", job_id, "-o", "json", check=True).stdout)["sagas"]
    rows = query(
        url,
        "SELECT id::text, saga_type, state, correlation_id FROM sagas WHERE correlation_id = %s "
        "ORDER BY started_at DESC, id",
        (job_id,),
    )
    assert [(s["id"], s["saga_type"], s["state"], s["correlation_id"]) for s in listed] == rows
    assert all(s["steps"] == [] for s in listed)
    execution = next(s["id"] for s in listed if s["saga_type"] == "EXECUTION")
    shown = json.loads(server.cli("saga", "show", execution, "-o", "json", check=True).stdout)
    steps = query(url, "SELECT step_name, state FROM saga_steps WHERE saga_id = %s ORDER BY step_order", (execution,))
    assert [(s["name"], s["state"]) for s in shown["steps"]] == steps
    assert (
        len(shown["audit"])
        == query(url, "SELECT count(*) FROM saga_audit_events WHERE saga_id = %s", (execution,))[0][0]
    )

    # Filters, and plain text when piped: the full ids, one saga per line.
    completed = json.loads(
        server.cli("saga", "list", "--type", "execution", "--state", "completed", "-o", "json", check=True).stdout
    )["sagas"]
    assert completed
    assert {(s["saga_type"], s["state"]) for s in completed} == {("EXECUTION", "COMPLETED")}
    table = server.cli("saga", "list", "--job", job_id, check=True).stdout
    assert all(row[0] in table for row in rows)
    tree = server.cli("saga", "show", execution, check=True).stdout
    assert tree.splitlines()[0].startswith(f"EXECUTION saga {execution}")
    assert all(f"{step}: {state}" in tree for step, state in steps)
    text = server.cli("job", "describe", job_id, check=True).stdout
    assert f"Job {job_id}" in text
    assert "Phases" in text
    assert [line.split()[0] for line in text.splitlines() if " saga " in line and "attempt" in line] == [
        row[1] for row in reversed(rows)
    ]


def test_describe_and_saga_refuse_bad_input(server: ServerProcess) -> None:
    unknown = server.cli("job", "describe", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode != 0
    assert "not found" in unknown.stderr
    assert "not found" in server.cli("saga", "show", "nope").stderr
    bad_state = server.cli("saga", "list", "--state", "DONE")
    assert bad_state.returncode != 0
    assert "state must be one of" in bad_state.stderr
