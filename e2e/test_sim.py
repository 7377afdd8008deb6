"""The sim provider: simulated workers that speak the real worker protocol, so the
whole control plane runs as for real jobs (sagas, admission, streams, logs)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.domain.provider import PROVIDER_IDS, ProviderType
from hodei.providers.agent_template import alive
from hodei.testing import BIN, ServerProcess, eventually, query, wait_running, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_SIM_MAX_WORKERS": "20", "HODEI_LOCAL_ENABLED": "0"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process
    print(process.logs()[-5000:])


def sim(server: ServerProcess, env: str, *extra: str) -> tuple[int, str, str]:
    result = server.cli("job", "run", "--provider", "sim", "--command", "simulated", "--env", env, *extra)
    return result.returncode, result.stdout, result.stderr


def submit(server: ServerProcess, count: int, seconds: float, timeout: float) -> list[str]:
    """``count`` sim jobs of ``seconds`` each, through the API."""
    spec = common_pb2.JobSpec(
        name="sim",
        command="simulated",
        timeout_seconds=timeout,
        provider="sim",
        env={"HODEI_SIM_SECONDS": f"{seconds:g}"},
    )
    with server.channel() as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        return [stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec), timeout=30).job_id for _ in range(count)]


def test_a_simulated_job_prints_its_lines_and_exits_with_its_code(server: ServerProcess) -> None:
    code, out, err = sim(server, "HODEI_SIM_SECONDS=0.2,HODEI_SIM_LINES=2500,HODEI_SIM_EXIT_CODE=3", "--follow")
    assert code == 3, err
    assert out.splitlines() == [f"sim line {n}" for n in range(1, 2501)]
    job_id = query(server.database_url, "SELECT id::text FROM jobs ORDER BY created_at DESC LIMIT 1")[0][0]
    wait_settled(server.database_url, job_id, 30)
    shown = json.loads(server.cli("job", "describe", job_id, "-o", "json", check=True).stdout)
    assert (shown["job"]["state"], shown["job"]["exit_code"], shown["job"]["provider_type"]) == ("FAILED", 3, "sim")
    assert {(s["saga_type"], s["state"]) for s in shown["sagas"]} == {
        ("PROVISIONING", "COMPLETED"),
        ("EXECUTION", "COMPLETED"),
    }
    assert [w["provider_resource_id"] for w in shown["workers"]] == [f"sim-{shown['workers'][0]['id']}"]


def test_timeouts_and_cancellation_behave_as_for_real_jobs(server: ServerProcess) -> None:
    code, _, _ = sim(server, "HODEI_SIM_SECONDS=30", "--timeout", "1", "--wait")
    assert code == 124
    code, out, _ = sim(server, "HODEI_SIM_SECONDS=60")
    assert code == 0
    job_id = out.strip()
    eventually(
        lambda: query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 30
    )
    server.cli("job", "cancel", job_id, check=True)
    wait_settled(server.database_url, job_id, 30)
    assert query(server.database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]
    # Its "processes" ended as a command's do at a cancel's SIGTERM; the job keeps no exit code.
    shown = server.cli("job", "get", job_id, check=True).stdout
    assert "\nExit code: - (cancelled; its processes exited with code 143)\n" in shown, shown


def test_signals_act_on_a_simulated_job_as_on_a_command(server: ServerProcess) -> None:
    """It goes on after those it handles (HODEI_SIM_HANDLES) and WINCH; STOP stops its
    clock until CONT; any other ends it as killed by that signal (128 + N)."""
    url = server.database_url
    submitted = time.monotonic()
    code, out, err = sim(server, "HODEI_SIM_SECONDS=10,HODEI_SIM_HANDLES=USR1,HUP")
    assert code == 0, err
    stopped = out.strip()
    wait_running(url, stopped)
    for name in ("STOP", "USR1", "HUP", "WINCH"):
        server.cli("job", "signal", stopped, "--signal", name, check=True)
        server.logged(stopped, f"[hodei] SIG{name} sent to the command (job signal)")
    time.sleep(max(0.0, submitted + 16 - time.monotonic()))  # past its ten seconds, had its clock gone on
    assert query(url, "SELECT state FROM jobs WHERE id = %s", (stopped,)) == [("RUNNING",)]
    server.cli("job", "signal", stopped, "--signal", "CONT", check=True)
    wait_settled(url, stopped, 30)
    assert query(url, "SELECT state, exit_code FROM jobs WHERE id = %s", (stopped,)) == [("SUCCEEDED", 0)]

    code, out, err = sim(server, "HODEI_SIM_SECONDS=60,HODEI_SIM_HANDLES=USR1")
    ended = out.strip()
    wait_running(url, ended)
    server.cli("job", "signal", ended, "--signal", "TERM", check=True)
    wait_settled(url, ended, 30)
    assert query(url, "SELECT state, exit_code, error_message FROM jobs WHERE id = %s", (ended,)) == [
        ("FAILED", 143, "exited with code 143")
    ]
    assert "[hodei] SIGTERM sent to the command (job signal)" in server.logged(ended, "SIGTERM")


def test_bad_sim_settings_are_refused_before_anything_is_written(server: ServerProcess) -> None:
    jobs = query(server.database_url, "SELECT count(*) FROM jobs")
    for setting in (
        "HODEI_SIM_SECONDS=soon",
        "HODEI_SIM_SECONDS=-1",
        "HODEI_SIM_LINES=-5",
        "HODEI_SIM_EXIT_CODE=x",
        "HODEI_SIM_EXIT_CODE=999",
        "HODEI_SIM_EXIT_CODE=-1",
        "HODEI_SIM_HANDLES=USR1,USR9",
        "HODEI_SIM_HANDLES=KILL",
        "HODEI_SIM_ARTIFACT_BYTES=-1",
        "HODEI_SIM_ARTIFACT_BYTES=1k",
    ):
        code, out, err = sim(server, setting, "--wait")
        assert code == 2, (setting, out, err)
        assert "HODEI_SIM_" in err, err
    assert query(server.database_url, "SELECT count(*) FROM jobs") == jobs


def test_a_simulated_job_stores_a_file_of_the_size_asked_for_each_artifact_pattern(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Load tests of artifact storage: a file per --artifact pattern, uploaded over the
    real RPC in the agent's pieces, listed, fetched and said in the log as a real job's."""
    size = 7 * 1024 * 1024 + 5  # three pieces, the last a short one
    code, out, err = sim(
        server,
        f"HODEI_SIM_ARTIFACT_BYTES={size}",
        "--artifact",
        "report.txt",
        "--artifact",
        "out/*.log",
        "--artifact",
        "report.txt",
        "--wait",
    )
    assert code == 0, err
    job_id = out.strip()
    wait_settled(server.database_url, job_id, 60)
    listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json", check=True).stdout)["artifacts"]
    assert sorted((a["name"], a["size_bytes"]) for a in listed) == [("out/sim.log", size), ("report.txt", size)]
    server.cli("job", "artifacts", job_id, "--save", str(tmp_path), check=True)
    for name in ("report.txt", "out/sim.log"):
        data = (tmp_path / name).read_bytes()
        assert len(data) == size and data.startswith(b"a simulated artifact of the sim provider\n")
    assert server.cli("job", "logs", job_id, check=True).stderr.splitlines() == [
        f"[hodei] stored 2 artifacts, {2 * size} bytes"
    ]


def test_a_hundred_simulated_jobs_within_the_sim_capacity(server: ServerProcess) -> None:
    job_ids = submit(server, 100, seconds=0.3, timeout=60)
    live = "SELECT count(*) FROM workers WHERE state <> 'TERMINATED'"
    most = 0
    for job_id in job_ids:
        most = max(most, query(server.database_url, live)[0][0])
        wait_settled(server.database_url, job_id, 120)
    succeeded = "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND state = 'SUCCEEDED'"
    assert query(server.database_url, succeeded, (job_ids,)) == [(100,)]
    assert most <= 20
    provider = json.loads(server.cli("provider", "get", "sim", "-o", "json", check=True).stdout)[0]
    assert (provider["max_workers"], provider["initialised"], provider["health"]) == (20, True, "HEALTHY")
    # Health is recorded when it changes; a burst changes nothing (a provider that is
    # reloaded for every job must not grow an event per probe).
    health_events = query(
        server.database_url,
        "SELECT count(*) FROM domain_events WHERE aggregate_id = %s AND event_type = 'ProviderHealthChanged'",
        (str(PROVIDER_IDS[ProviderType.SIM]),),
    )
    assert health_events == [(1,)]


def test_the_fleet_runs_apart_and_a_killed_fleet_loses_only_its_own_workers(server: ServerProcess) -> None:
    """The simulated workers run in a process of the server's own. Killing it loses the
    jobs it was running, as lost workers; the next job starts a new one."""
    code, out, _ = sim(server, "HODEI_SIM_SECONDS=600")
    assert code == 0
    job_id = out.strip()
    eventually(
        lambda: query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 30
    )
    fleet = server.sim_fleet()
    assert fleet is not None
    os.kill(fleet, signal.SIGKILL)
    wait_settled(server.database_url, job_id, 60)
    ((state, error),) = query(server.database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))
    assert state == "FAILED" and error.count("the simulated fleet process exited with code -9") == 1, error
    code, _, err = sim(server, "HODEI_SIM_EXIT_CODE=0", "--wait")
    assert code == 0, err
    assert server.sim_fleet() not in (None, fleet)


def test_the_fleet_ends_with_a_killed_server(fresh_database_url: str, tmp_path: Path) -> None:
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:  # alone on its database
        assert sim(server, "HODEI_SIM_SECONDS=600")[0] == 0
        fleet = eventually(server.sim_fleet, 30)
        server.kill()
        eventually(lambda: not alive(fleet), 30, what="the fleet process to end")


def test_a_server_started_with_few_open_files_raises_its_limit_and_carries_its_fleet(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """A usual shell's soft limit of open files (1024; 256 here) is fewer than a fleet's sockets
    and logs: the server raises its own to the hard limit at start, and 400 workers connected at
    once all end well (with the limit it was started with, 300 never ran at once). A local job
    keeps the limit the server was given, as run by hand."""
    wrapper = tmp_path / "hodei-server"
    wrapper.write_text(f'#!/bin/sh\nulimit -Sn 256\nexec {BIN / "hodei-server"} "$@"\n')
    wrapper.chmod(0o755)
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_KILL_GRACE": "1"}
    with ServerProcess(fresh_database_url, tmp_path / "logs", env, program=wrapper) as server:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        found = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert found is not None and found[1] == found[2] and int(found[1]) > 256, limits
        local = server.cli("job", "run", "-p", "local", "--command", "ulimit -Sn", "--wait", check=True).stdout
        assert server.cli("job", "logs", local.strip(), check=True).stdout == "256\n"
        job_ids = submit(server, 400, seconds=30, timeout=120)
        running = "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND state = 'RUNNING'"
        # More workers connected at once than the limit it was started with.
        eventually(lambda: query(fresh_database_url, running, (job_ids,))[0][0] >= 300, 120, what="300 running")
        for job_id in job_ids:
            wait_settled(fresh_database_url, job_id, 180)
        ended = query(
            fresh_database_url, "SELECT state, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY 1", (job_ids,)
        )
        assert ended == [("SUCCEEDED", 400)], ended
