"""Admission control end to end: a provider never runs more workers than its capacity,
the rest wait in the queue and leave it by priority, a job's own timeout does not run
while it waits, a queue timeout does, and a burst far larger than the capacity all ends."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from hodei.domain.job import TERMINAL_STATES
from hodei.testing import (
    ServerProcess,
    eventually,
    hodei_server,
    query,
    wait_all,
    wait_running,
    wait_settled,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


def submit_many(server: ServerProcess, specs: list[common_pb2.JobSpec]) -> list[str]:
    with server.channel() as channel, ThreadPoolExecutor(16) as pool:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        return list(pool.map(lambda s: stub.QueueJob(jobs_pb2.QueueJobRequest(spec=s), timeout=60).job_id, specs))


def spec(provider: str, command: str, **fields: Any) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(name="capacity", command=command, timeout_seconds=120, provider=provider, **fields)


@pytest.mark.docker
def test_docker_never_runs_more_than_its_capacity_and_priority_goes_first(
    fresh_database_url: str, worker_image: str, docker_client: Any, tmp_path: Path
) -> None:
    env = {"HODEI_DOCKER_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0", "HODEI_WORKER_IMAGE": worker_image}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        capacity = json.loads(server.cli("provider", "capacity", "docker", "4", "-o", "json", check=True).stdout)
        assert capacity[0]["max_workers"] == 4
        (installation,) = query(fresh_database_url, "SELECT value FROM hodei.secrets WHERE name = 'installation_id'")[0]
        low = submit_many(server, [spec("docker", "sleep 2") for _ in range(50)])
        high = submit_many(server, [spec("docker", "sleep 2", priority=10) for _ in range(10)])
        queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
        assert queued and {q["provider"] for q in queued} <= {"docker", ""}  # "": being chosen

        def full() -> list[str] | None:
            # The first jobs may still be taking the slots when the submissions end (a
            # cold engine, a busy machine); 60 jobs of 2 s on 4 slots keep it full ~30 s.
            reasons = [q["reason"] for q in json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]]
            return reasons if any("provider docker is full: 4 of 4 workers" in r for r in reasons) else None

        eventually(full, 20, 0.2, "the queue to say that its provider is full")
        # Sampled every 100 ms until every job ended (the low-level list: one call).
        most = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            running = docker_client.api.containers(all=True, filters={"label": f"hodei.installation={installation}"})
            most = max(most, len(running))
            states = dict(query(fresh_database_url, "SELECT id::text, state FROM jobs"))
            if all(state in TERMINAL_STATES for state in states.values()):
                break
            time.sleep(0.1)
        assert set(states.values()) == {"SUCCEEDED"}
        assert 0 < most <= 4, most
        started = dict(query(fresh_database_url, "SELECT id::text, started_at FROM jobs"))
        last_high = max(started[job] for job in high)
        # When the high-priority jobs came, at most the first few low ones held or were
        # taking the slots; every other low one was still queued and went after them.
        low_before = sum(1 for job in low if started[job] < last_high)
        assert low_before <= 8, low_before
        for job_id in low + high:
            wait_settled(fresh_database_url, job_id)


def test_a_queued_job_times_out_in_the_queue_and_its_own_timeout_waits(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOCAL_MAX_WORKERS": "1"}) as server:
        blocker = server.cli(
            "job", "run", "--provider", "local", "--command", "sleep 5", "--timeout", "60", check=True
        ).stdout.strip()
        eventually(
            lambda: query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (blocker,)) == [("RUNNING",)], 30
        )
        impatient = server.cli(
            "job", "run", "--provider", "local", "--command", "true", "--queue-timeout", "1.5", "--wait"
        )
        # Its own --timeout (2 s) only starts when it runs: 4 s in the queue do not count.
        patient = server.cli("job", "run", "--provider", "local", "--command", "sleep 1", "--timeout", "2", "--wait")
        assert impatient.returncode == 125, impatient.stderr
        assert "waited in the queue past its queue timeout" in impatient.stderr
        assert patient.returncode == 0, patient.stderr
        for job_id in (blocker, impatient.stdout.strip(), patient.stdout.strip()):
            wait_settled(fresh_database_url, job_id)
        assert query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (blocker,)) == [("SUCCEEDED",)]


def test_a_cancelled_queued_job_leaves_the_queue(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOCAL_MAX_WORKERS": "1"}) as server:
        (blocker,) = submit_many(server, [spec("local", "sleep 3")])
        eventually(
            lambda: query(fresh_database_url, "SELECT admitted_at FROM jobs WHERE id = %s", (blocker,))[0][0], 20
        )
        (waiting,) = submit_many(server, [spec("local", "true")])

        def queued() -> list[str]:
            return [q["job_id"] for q in json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]]

        eventually(lambda: queued() == [waiting], 20)
        server.cli("job", "cancel", "--id", waiting, check=True)
        assert json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"] == []
        for job_id in (blocker, waiting):
            wait_settled(fresh_database_url, job_id)
        assert query(fresh_database_url, "SELECT state FROM workers WHERE job_id = %s", (waiting,)) == []


def test_a_disabled_providers_queue_waits_until_it_is_enabled_and_its_running_jobs_go_on(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Disabled, a provider went on starting the jobs in its queue as slots freed (it
    refused only new submissions): an operator stopping it for maintenance saw workers
    made on it for as long as the queue lasted."""
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOCAL_MAX_WORKERS": "1"}) as server:
        (running,) = submit_many(server, [spec("local", "sleep 2")])
        eventually(
            lambda: query(fresh_database_url, "SELECT admitted_at FROM jobs WHERE id = %s", (running,))[0][0], 20
        )
        (waiting,) = submit_many(server, [spec("local", "true")])
        server.cli("provider", "disable", "local", check=True)
        refused = server.cli("job", "run", "-p", "local", "-c", "true", "--wait")
        assert refused.returncode == 125 and "provider local is disabled" in refused.stderr, refused.stderr
        assert wait_terminal(fresh_database_url, running) == "SUCCEEDED"
        wait_settled(fresh_database_url, running)  # its worker released: its slot is free
        time.sleep(3)  # three sweeps, each an admission round
        assert query(fresh_database_url, "SELECT state, admitted_at FROM jobs WHERE id = %s", (waiting,)) == [
            ("PENDING", None)
        ]
        (queued,) = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
        assert queued["reason"] == "provider local is disabled: its queue waits until `provider enable local`"
        server.cli("provider", "enable", "local", check=True)
        assert wait_terminal(fresh_database_url, waiting) == "SUCCEEDED"
        wait_settled(fresh_database_url, waiting)


def test_five_hundred_jobs_at_once_on_the_local_provider_all_succeed(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path) as server:
        job_ids = submit_many(server, [spec("local", "true") for _ in range(500)])
        states = wait_all(fresh_database_url, job_ids, 600)
        assert set(states.values()) == {"SUCCEEDED"}, {s: list(states.values()).count(s) for s in set(states.values())}


def test_local_workers_start_a_few_at_a_time_while_the_capacity_still_runs_them_together(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """HODEI_LOCAL_MAX_STARTING=1: never two local workers starting at once (admitted, not
    yet registered), while more than one runs; the queue says why a job waits."""
    env = {"HODEI_LOCAL_MAX_STARTING": "1", "HODEI_LOCAL_MAX_WORKERS": "4"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        job_ids = submit_many(server, [spec("local", "sleep 3") for _ in range(6)])
        reasons: set[str] = set()
        most_starting = most_live = 0
        with server.channel() as channel:
            scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                ((starting, live),) = query(
                    fresh_database_url,
                    "SELECT count(*) FILTER (WHERE w.state IN ('CREATING', 'CONNECTING')) "
                    "       + (SELECT count(*) FROM jobs j WHERE j.admitted_at IS NOT NULL AND j.state = 'PENDING'"
                    "          AND NOT EXISTS (SELECT 1 FROM workers x WHERE x.job_id = j.id)),"
                    "       count(*) FILTER (WHERE w.state <> 'TERMINATED') FROM workers w",
                )
                most_starting, most_live = max(most_starting, starting), max(most_live, live)
                status = scheduler.GetQueueStatus(scheduler_pb2.GetQueueStatusRequest(), timeout=10)
                reasons |= {queued.reason for queued in status.queued}
                if not status.queued and not status.pending and not status.assigned and not status.running:
                    break
                time.sleep(0.02)
        states = wait_all(fresh_database_url, job_ids, 120)
    assert set(states.values()) == {"SUCCEEDED"}, states
    assert most_starting == 1
    assert most_live > 1  # a started worker runs on while the next one starts
    assert any("starts at most 1 workers at once" in reason for reason in reasons), reasons


def test_a_providers_cpu_and_memory_hold_its_jobs_requests_and_say_why_a_job_waits(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """`provider capacity sim --cpus 1 --memory 1Gi`: its workers as they were; a job
    asking for more than the provider has is refused at submission, nothing written; a
    job whose request does not fit beside those running waits, saying why, and starts
    once they end; the change is in the audit and replays; lifted with `none`."""
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_SIM_MAX_WORKERS": "8", "HODEI_LOCAL_ENABLED": "0"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        (shown,) = json.loads(
            server.cli("provider", "capacity", "sim", "--cpus", "1", "--memory", "1Gi", "-o", "json", check=True).stdout
        )
        assert (shown["max_workers"], shown["max_cpu_cores"], shown["max_memory_bytes"]) == (8, 1.0, 2**30)
        table = server.cli("provider", "get", "sim", check=True).stdout
        assert "0/1" in table and "0 bytes/1.0 GiB" in table, table

        before = query(fresh_database_url, "SELECT count(*) FROM jobs")
        refused = server.cli("job", "run", "-p", "sim", "-c", "x", "--cpu", "2", "--memory", "2Gi")
        assert refused.returncode == 2, refused.stderr
        assert (
            "provider sim never has room for the job: it asks for 2 CPU, more than its 1 and 2.0 GiB memory, "
            "more than its 1.0 GiB (provider capacity sim)"
        ) in refused.stderr
        assert query(fresh_database_url, "SELECT count(*) FROM jobs") == before

        # The first runs until cancelled: however slow the machine, the second is seen waiting.
        sim = ("job", "run", "-p", "sim", "-c", "x", "--cpu", "0.75", "--memory", "256Mi", "--env")
        first = server.cli(*sim, "HODEI_SIM_SECONDS=600", check=True).stdout.strip()
        wait_running(fresh_database_url, first)
        second = server.cli(*sim, "HODEI_SIM_SECONDS=1", check=True).stdout.strip()

        def reason() -> str | None:
            queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
            return next((q["reason"] for q in queued if q["job_id"] == second and "no room" in q["reason"]), None)

        assert eventually(reason, 20) == (
            "provider sim has no room for it yet: its jobs ask for 0.75 of 1 CPU, 256.0 MiB of 1.0 GiB memory, "
            "and it asks for 0.75 CPU, 256.0 MiB memory"
        )
        assert "Waiting: place 1 in provider sim's queue" in server.cli("job", "get", second, check=True).stdout
        server.cli("job", "cancel", first, check=True)
        jobs = [first, second]
        assert [wait_terminal(fresh_database_url, job_id) for job_id in jobs] == ["CANCELLED", "SUCCEEDED"]
        (ran,) = query(
            fresh_database_url,
            "SELECT (SELECT started_at FROM jobs WHERE id = %s) >= (SELECT completed_at FROM jobs WHERE id = %s)",
            (second, first),
        )
        assert ran == (True,)  # the second began only once the first had ended

        lifted = json.loads(
            server.cli("provider", "capacity", "sim", "--cpus", "none", "-o", "json", check=True).stdout
        )
        assert (lifted[0]["max_cpu_cores"], lifted[0]["max_memory_bytes"]) == (0.0, 2**30)
        changes = json.loads(server.cli("audit", "--kind", "provider", "-o", "json", check=True).stdout)
        assert [c["change"] for c in changes[:2]] == [
            "resources for its jobs at once: 1.0 GiB memory",
            "resources for its jobs at once: 1 CPU, 1.0 GiB memory",
        ]
        for bad, words in (
            (("--cpus", "many"), "--cpus takes CPU cores (4, 0.5) or none, got 'many'"),
            (("--cpus", "-1"), "--cpus takes CPU cores"),
            (("--memory", "lots"), "malformed --memory `lots`"),
            ((), "give the workers it runs at once, --cpus, --memory, or several of them"),
        ):
            result = server.cli("provider", "capacity", "sim", *bad)
            assert result.returncode == 2 and words in result.stderr, (bad, result.stderr)
        for job_id in jobs:
            wait_settled(fresh_database_url, job_id)
    verified = hodei_server(fresh_database_url, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_servers_default_request_counts_against_a_providers_cpus(fresh_database_url: str, tmp_path: Path) -> None:
    """HODEI_DEFAULT_CPUS and HODEI_DEFAULT_MEMORY_BYTES, as a LimitRange's defaultRequest:
    a job asking for none asks for them (`job get` says so), so `provider capacity --cpus`
    holds jobs that say nothing of their CPU; HODEI_MAX_CPUS refuses more, nothing written."""
    env = {
        "HODEI_SIM_ENABLED": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_DEFAULT_CPUS": "0.5",
        "HODEI_DEFAULT_MEMORY_BYTES": str(64 * 2**20),
        "HODEI_MAX_CPUS": "1",
    }
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        server.cli("provider", "capacity", "sim", "--cpus", "1", check=True)
        sim = ("job", "run", "-p", "sim", "-c", "x", "--env", "HODEI_SIM_SECONDS=600")
        running = [server.cli(*sim, check=True).stdout.strip() for _ in range(2)]
        for job_id in running:
            wait_running(fresh_database_url, job_id)
        shown = server.cli("job", "get", running[0], check=True).stdout
        assert "Resources: 0.5 CPU, 64.0 MiB memory\n" in shown, shown
        third = server.cli(*sim, check=True).stdout.strip()

        def reason() -> str | None:
            queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
            return next((q["reason"] for q in queued if q["job_id"] == third and "no room" in q["reason"]), None)

        assert eventually(reason, 20) == (
            "provider sim has no room for it yet: its jobs ask for 1 of 1 CPU, and it asks for 0.5 CPU, 64.0 MiB memory"
        )
        before = query(fresh_database_url, "SELECT count(*) FROM jobs")
        refused = server.cli("job", "run", "-p", "sim", "-c", "x", "--cpu", "2")
        assert refused.returncode == 2, refused.stderr
        said = "CPU of 2 cores is past this server's most for a job, 1 core (HODEI_MAX_CPUS)"
        assert said in refused.stderr, refused.stderr
        assert query(fresh_database_url, "SELECT count(*) FROM jobs") == before
        for job_id in [*running, third]:
            server.cli("job", "cancel", job_id, check=True)
            wait_settled(fresh_database_url, job_id)


def test_a_waiting_jobs_time_limit_and_resources_change_in_its_line(fresh_database_url: str, tmp_path: Path) -> None:
    """`job update ID --cpu 0.25 --timeout 2h` (Slurm's scontrol update of a pending job): a
    job that waits because it asks for more than is free beside the running ones starts once
    it asks for less, without losing its place or being submitted again; its new limits are
    in its spec, its phases and its history, and replay. Refused, writing nothing: a job
    not waiting, a value no job may have, one its provider never has room for, nothing."""
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        server.cli("provider", "capacity", "sim", "--cpus", "1", check=True)
        sim = ("job", "run", "-p", "sim", "-c", "x", "--env")
        first = server.cli(*sim, "HODEI_SIM_SECONDS=600", "--cpu", "0.75", check=True).stdout.strip()
        wait_running(fresh_database_url, first)
        second = server.cli(*sim, "HODEI_SIM_SECONDS=1", "--cpu", "0.5", "--timeout", "30", check=True).stdout.strip()

        def waiting() -> bool:
            queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
            return any(q["job_id"] == second and "no room" in q["reason"] for q in queued)

        eventually(waiting, 20)
        updated = server.cli("job", "update", second, "--cpu", "0.25", "--timeout", "2h", check=True)
        assert f"Job {second} priority 0, timeout 2.0 h, 0.25 CPU" in updated.stderr, updated.stderr
        assert wait_terminal(fresh_database_url, second) == "SUCCEEDED"  # beside the first, still running
        assert query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (first,)) == [("RUNNING",)]
        job = json.loads(server.cli("job", "get", second, "-o", "json", check=True).stdout)
        assert (job["spec"]["timeout_seconds"], job["spec"]["resources"]["cpu_cores"]) == (7200.0, 0.25)
        phases = [(p["name"], p.get("detail", "")) for p in job["phases"]]
        assert ("limits_changed", "timeout 2.0 h, 0.25 CPU") in phases, phases

        events = query(fresh_database_url, "SELECT count(*) FROM domain_events")
        for args, said in (
            (
                (first, "--cpu", "0.5"),
                "is RUNNING: only a job waiting in the queue changes its time limit or resources",
            ),
            ((second, "--timeout", "1h"), "is SUCCEEDED: only a job waiting in the queue changes"),
            ((first, "--timeout", "-5"), "timeout must be a positive number of seconds, got -5"),
            ((first, "--memory", "lots"), "malformed --memory `lots`"),
            ((first,), "nothing to change: give --priority, --timeout, --cpu, --memory or --disk"),
        ):
            refused = server.cli("job", "update", *args)
            assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
        assert query(fresh_database_url, "SELECT count(*) FROM domain_events") == events
        third = server.cli(*sim, "HODEI_SIM_SECONDS=1", "--cpu", "0.5", "--hold", check=True).stdout.strip()
        events = query(fresh_database_url, "SELECT count(*) FROM domain_events")
        never = server.cli("job", "update", third, "--cpu", "2")
        assert never.returncode == 2 and "provider sim never has room for the job" in never.stderr, never.stderr
        assert query(fresh_database_url, "SELECT count(*) FROM domain_events") == events
        for job_id in (first, third):
            server.cli("job", "cancel", job_id, check=True)
            wait_settled(fresh_database_url, job_id)
    verified = hodei_server(fresh_database_url, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
