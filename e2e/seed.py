"""The seed procedure's jobs and its Phase 6 checks, shared by the local, Docker and
Kubernetes end-to-end tests. Queries use exactly the seed's column names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hodei.logs import LogStore
from hodei.testing import Cli, query

# Seed 1.2: exactly these tables in `public`. Seed 3.2: these services, listed by reflection.
SEED_TABLES = [
    "domain_events",
    "job_log_files",
    "jobs",
    "outbox_events",
    "provider_configs",
    "saga_audit_events",
    "saga_steps",
    "sagas",
    "workers",
]
SEED_SERVICES = {
    "hodei.jobs.JobExecutionService",
    "hodei.jobs.WorkerAgentService",
    "hodei.jobs.SchedulerService",
    "hodei.jobs.ProviderManagementService",
    "hodei.jobs.MetricsService",
    "hodei.jobs.LogStreamService",
}
UUID_LINE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$")
SEED_EVENTS = ["JobCreated", "JobAssigned", "JobAccepted", "JobStatusChanged", "JobStatusChanged"]


@dataclass(frozen=True)
class SeedJob:
    """One of the seed's Phase 5 jobs: its flags and the lines its log must contain."""

    title: str
    flags: tuple[str, ...]
    expected_lines: tuple[str, ...]
    min_seconds: float = 0.0


def phase5_jobs(provider: str) -> list[SeedJob]:
    return [
        SeedJob(
            "echo",
            (
                "--name",
                f"test-echo-{provider}",
                "--provider",
                provider,
                "--command",
                f"echo 'Hello from Hodei {provider.capitalize()} Worker!'",
                "--timeout",
                "30",
            ),
            (f"Hello from Hodei {provider.capitalize()} Worker!",),
        ),
        SeedJob(
            "multi-command",
            (
                "--name",
                f"test-multicmd-{provider}",
                "--provider",
                provider,
                "--command",
                "bash -c 'echo Step1 && sleep 1 && echo Step2 && sleep 1 && echo Step3'",
                "--timeout",
                "60",
            ),
            ("Step1", "Step2", "Step3"),
        ),
        SeedJob(
            "long-running",
            (
                "--name",
                f"test-long-{provider}",
                "--provider",
                provider,
                "--command",
                "for i in 1 2 3 4 5; do echo Iteration $i; sleep 2; done",
                "--timeout",
                "120",
            ),
            tuple(f"Iteration {i}" for i in range(1, 6)),
            min_seconds=10.0,
        ),
        SeedJob(
            "env vars",
            (
                "--name",
                f"test-env-{provider}",
                "--provider",
                provider,
                "--command",
                "bash -c 'echo MY_VAR=$MY_VAR && echo NUM_VAR=$NUM_VAR'",
                "--env",
                "MY_VAR=hello_world,NUM_VAR=42",
                "--timeout",
                "30",
            ),
            ("MY_VAR=hello_world", "NUM_VAR=42"),
        ),
        SeedJob(
            "arguments",
            (
                "--name",
                f"test-args-{provider}",
                "--provider",
                provider,
                "--command",
                "bash",
                "--args",
                "-c 'echo Processing file test.txt && echo Done'",
                "--timeout",
                "30",
            ),
            ("Processing file test.txt", "Done"),
        ),
    ]


def submit(server: Cli, job: SeedJob) -> str:
    """`JOB_ID=$(hodei-jobs-cli job run ...)`: stdout must be the id and nothing else."""
    result = server.cli("job", "run", *job.flags, check=True)
    assert UUID_LINE.match(result.stdout), f"job run printed {result.stdout!r}"
    return result.stdout.strip()


def check_job_get(server: Cli, job_id: str, state: str = "SUCCEEDED", code: int = 4) -> str:
    result = server.cli("job", "get", "--id", job_id, check=True)
    assert f"Status: {state} (Status Code: {code})" in result.stdout.splitlines(), result.stdout
    return result.stdout


def check_phase6(url: str, job_id: str, provider_type: str, provider_id: str, job: SeedJob) -> None:
    # 6.1 the job row
    (row,) = query(
        url,
        "SELECT id, state, selected_provider_id, created_at, started_at, completed_at, error_message "
        "FROM jobs WHERE id = %s",
        (job_id,),
    )
    _, state, selected, created, started, completed, error = row
    assert (state, str(selected), error) == ("SUCCEEDED", provider_id, None), row
    assert created <= started <= completed
    assert (completed - started).total_seconds() >= job.min_seconds

    # 6.2 the domain events, in occurred_at order
    events = query(
        url,
        "SELECT event_type, aggregate_id, occurred_at::text, payload->>'new_state' FROM domain_events "
        "WHERE aggregate_id = %s ORDER BY occurred_at",
        (job_id,),
    )
    kinds = [e[0] for e in events]
    it = iter(kinds)
    assert all(kind in it for kind in SEED_EVENTS), f"{SEED_EVENTS} is not a subsequence of {kinds}"
    assert [e[3] for e in events if e[0] == "JobStatusChanged"] == ["RUNNING", "SUCCEEDED"]
    assert kinds[0] == "JobCreated"

    # 6.3 the log file
    (log_row,) = query(
        url,
        "SELECT id, storage_uri, size_bytes, entry_count, created_at::text FROM job_log_files WHERE job_id = %s",
        (job_id,),
    )
    _, uri, size, entries, _ = log_row
    assert uri.startswith("file:///") and uri.endswith(f"/{job_id}.log"), uri
    assert size > 0 and entries >= len(job.expected_lines)
    path = Path(urlparse(uri).path)
    assert path.stat().st_size == size
    stored = LogStore(path.parent).read(job_id)
    assert len([entry for entry in stored.entries if not entry.partial]) == entries
    lines = [(entry.stream, entry.text) for entry in stored.entries]
    for line in job.expected_lines:
        assert ("stdout", line) in lines, f"{line!r} missing from {path}:\n{path.read_text()}"

    # 6.4 the worker
    workers = query(
        url,
        "SELECT id, state, provider_type, provider_resource_id, created_at, updated_at FROM workers WHERE job_id = %s",
        (job_id,),
    )
    assert len(workers) == 1, workers
    _, worker_state, worker_provider, resource, _, _ = workers[0]
    assert (worker_state, worker_provider) == ("TERMINATED", provider_type)
    assert resource

    # 6.7 the sagas, their steps and their audit trail
    sagas = query(
        url,
        "SELECT id, saga_type, state, correlation_id, error_message, started_at, completed_at FROM sagas "
        "WHERE correlation_id = %s ORDER BY started_at DESC",
        (job_id,),
    )
    assert sorted((s[1], s[2], s[3], s[4]) for s in sagas) == [
        ("EXECUTION", "COMPLETED", job_id, None),
        ("PROVISIONING", "COMPLETED", job_id, None),
    ]
    for saga in sagas:
        steps = query(
            url,
            "SELECT step_name, state, retry_count, error_message, started_at, completed_at FROM saga_steps "
            "WHERE saga_id = %s ORDER BY step_order",
            (saga[0],),
        )
        assert steps and all(s[1] == "COMPLETED" and s[3] is None and s[4] and s[5] for s in steps), steps
        trail = query(
            url,
            "SELECT event_type, step_name, message, occurred_at::text FROM saga_audit_events "
            "WHERE saga_id = %s ORDER BY occurred_at",
            (saga[0],),
        )
        kinds = [t[0] for t in trail]
        assert kinds[0] == "SagaStarted" and kinds[-1] == "SagaCompleted", kinds
        for step in steps:
            assert ("StepStarted", step[0]) in [(t[0], t[1]) for t in trail]
            assert ("StepCompleted", step[0]) in [(t[0], t[1]) for t in trail]
