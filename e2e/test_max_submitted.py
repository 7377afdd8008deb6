"""A submitter's most jobs not ended (`limit set SUBMITTER --max-submitted N`, Slurm's
MaxSubmitJobs): a submission past it (`job run`, an array, `job retry`, `cron run`) is
refused with RESOURCE_EXHAUSTED and nothing is written; a key sent again is still answered;
submissions racing for the last room pass one at a time; a cron job's schedule is not
refused. The submitter here is `anonymous` (no authentication)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs")) as process:
        yield process
        for submitter in ("*", "anonymous"):
            process.cli("limit", "delete", submitter)


def events(server: ServerProcess) -> int:
    ((count,),) = query(server.database_url, "SELECT count(*) FROM domain_events")
    return int(count)


def full(submitter: str, jobs: int, most: int, asked: str) -> str:
    return (
        f"submitter {submitter} has {jobs} jobs not ended, {most} at most (`limit get {submitter}`): "
        f"{asked} more would pass it; wait for some to end, or cancel some (RESOURCE_EXHAUSTED)"
    )


def cancel_all(server: ServerProcess) -> None:
    """Every job not ended cancelled: the next test starts with room."""
    for state in ("PENDING", "ASSIGNED", "RUNNING"):
        server.cli("job", "cancel", "--state", state, "--grace", "0s")
    for (job_id,) in query(server.database_url, "SELECT id::text FROM jobs"):
        wait_settled(server.database_url, job_id, 60)


def test_a_submission_past_the_most_jobs_not_ended_is_refused_and_writes_nothing(server: ServerProcess) -> None:
    ended = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True).stdout.strip()
    server.cli("cron", "create", "nightly", "--schedule", "@daily", "-p", "local", "-c", "true", check=True)
    shown = server.cli("limit", "set", "anonymous", "--max-submitted", "3", check=True).stdout.splitlines()
    assert shown[0].split() == ["SUBMITTER", "LIMIT", "MAX", "SUBMITTED", "RUNNING", "QUEUED"]
    assert shown[1].split() == ["anonymous", "-", "3", "0", "0"]  # no limit at once: `*` has none
    keyed = ("job", "run", "-p", "local", "-c", "true", "--hold", "--idempotency-key", "first")
    held = [server.cli(*keyed, check=True).stdout.strip()]
    held += [server.cli("job", "run", "-p", "local", "-c", "true", "--hold", check=True).stdout.strip() for _ in "ab"]
    assert server.cli("limit", "get", "anonymous", check=True).stdout.splitlines()[1].split() == [
        "anonymous",
        "-",
        "3",
        "0",
        "3",
    ]

    before = events(server)
    for args, asked in [
        (("job", "run", "-p", "local", "-c", "true"), "a job"),
        (("job", "run", "-p", "local", "-c", "true", "--array", "0-1"), "2 jobs"),
        (("job", "retry", ended), "a job"),
        (("cron", "run", "nightly"), "a job"),
    ]:
        refused = server.cli(*args)
        assert (refused.returncode, refused.stdout) == (2, ""), refused
        assert refused.stderr.endswith(full("anonymous", 3, 3, asked) + "\n"), refused.stderr
    assert events(server) == before
    # A key sent again names the job it submitted, full or not: nothing new is asked.
    again = json.loads(server.cli("-o", "json", *keyed, check=True).stdout)
    assert again == {"job_id": held[0], "already_submitted": True}

    server.cli("job", "cancel", held[1], check=True)
    wait_settled(server.database_url, held[1])
    refused = server.cli("job", "run", "-p", "local", "-c", "true", "--array", "0-1")
    assert refused.stderr.endswith(full("anonymous", 2, 3, "2 jobs") + "\n"), refused.stderr
    ran = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True)  # the room one job left
    wait_settled(server.database_url, ran.stdout.strip())

    # none: no limit, whatever `*` says; `*`: the submitter takes `*`'s.
    server.cli("limit", "set", "*", "--max-submitted", "0", check=True)
    server.cli("limit", "set", "anonymous", "--max-submitted", "none", check=True)
    server.cli("job", "run", "-p", "local", "-c", "true", "--hold", check=True)
    shown = server.cli("limit", "set", "anonymous", "--max-submitted", "*", check=True).stdout.splitlines()
    assert shown[1].split() == ["anonymous", "-", "0", "(*)", "0", "3"]
    refused = server.cli("job", "run", "-p", "local", "-c", "true")
    assert refused.stderr.endswith(full("anonymous", 3, 0, "a job") + "\n"), refused.stderr
    listed = json.loads(server.cli("limit", "list", "-o", "json", check=True).stdout)
    assert [(found["submitter"], found["max_submitted"], found["submitted_own"]) for found in listed] == [
        ("*", 0, True),
        ("anonymous", 0, False),
    ]
    server.cli("limit", "delete", "*", check=True)
    server.cli("limit", "delete", "anonymous", check=True)
    cancel_all(server)


def test_bad_limits_are_refused_with_nothing_written(server: ServerProcess) -> None:
    before = events(server)
    for args, said in [
        (("limit", "set", "alice", "--max-submitted", "-1"), "takes a number, none (no limit) or * (*'s), got '-1'"),
        (("limit", "set", "alice", "--max-submitted", "many"), "or * (*'s), got 'many'"),
        (("limit", "set", "alice"), "limit set: give the jobs at once, --max-submitted, or both"),
        (("limit", "set", "alice", "--max-submitted", "1000001"), "at most 0 (none submitted) to 1000000, got 1000001"),
        (("limit", "set", "*", "*"), "* is every submitter's limit: it has none to take its jobs from"),
        (("limit", "set", "*", "--max-submitted", "*"), "it has none to take its submitted from"),
    ]:
        refused = server.cli(*args)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
    assert events(server) == before


def test_submissions_racing_for_the_last_room_pass_one_at_a_time(server: ServerProcess) -> None:
    """Ten submissions at once with room for three: three jobs, seven refusals (each server
    counts under the submitter's lock, in the transaction that writes the job)."""
    server.cli("limit", "set", "anonymous", "--max-submitted", "3", check=True)
    spec = common_pb2.JobSpec(name="racing", command="true", timeout_seconds=30, provider="local")

    def submit(_: int) -> grpc.StatusCode:
        with server.channel() as channel:
            stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
            try:
                stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec, hold=True), timeout=60)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    try:
        with ThreadPoolExecutor(10) as threads:
            codes = list(threads.map(submit, range(10)))
        assert sorted(code.name for code in codes) == ["OK"] * 3 + ["RESOURCE_EXHAUSTED"] * 7
        assert query(server.database_url, "SELECT count(*) FROM jobs WHERE name = 'racing'") == [(3,)]
    finally:
        server.cli("limit", "delete", "anonymous", check=True)
        cancel_all(server)


def test_a_cron_jobs_schedule_is_not_refused(server: ServerProcess) -> None:
    """Its runs count, but a schedule that met the limit would fail every time, unseen."""
    server.cli("limit", "set", "anonymous", "--max-submitted", "0", check=True)
    try:
        server.cli("cron", "create", "ticker", "--schedule", "@every 1s", "-p", "local", "-c", "true", check=True)

        def started() -> list[tuple[str]] | None:
            found = query(
                server.database_url, "SELECT id::text FROM jobs WHERE spec->'labels'->>'hodei.io/cron' = 'ticker'"
            )
            return found or None

        eventually(started, 60, what="a job of the cron job's schedule")
        assert server.cli("cron", "run", "ticker").returncode == 2  # by hand, it is refused
    finally:
        server.cli("cron", "delete", "ticker")
        server.cli("limit", "delete", "anonymous", check=True)
        cancel_all(server)
