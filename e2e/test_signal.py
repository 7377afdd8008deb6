"""`job signal ID --signal NAME` (scancel --signal, docker kill --signal): a running job's
processes get the signal and go on, or not, as they handle it; the job's log says when it
came; each is delivered once, even when the worker's stream opens again on a new server;
the event log keeps who sent which, and replay rebuilds it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from hodei._proto import jobs_pb2, jobs_pb2_grpc
from hodei.testing import ServerProcess, hodei_server, query, wait_running, wait_settled

pytestmark = pytest.mark.e2e

# Each USR1 it gets is a line; TERM it does not handle.
TRAPS = "trap 'echo got USR1' USR1; echo ready; while true; do sleep 0.1; done"


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs")) as process:
        yield process


def test_a_signal_reaches_a_running_jobs_processes_which_go_on_or_not(server: ServerProcess) -> None:
    url = server.database_url
    job_id = server.cli("job", "run", "-p", "local", "-c", TRAPS, check=True).stdout.strip()
    wait_running(url, job_id)
    server.logged(job_id, "ready")
    sent = server.cli("job", "signal", job_id, "--signal", "usr1", check=True)
    assert (sent.stdout, sent.stderr) == ("", f"Job {job_id} SIGUSR1 sent to its processes\n")
    server.logged(job_id, "got USR1")
    server.logged(job_id, "[hodei] SIGUSR1 sent to the command (job signal)")
    assert query(url, "SELECT state, signals FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING", [[1, "USR1"]])]
    events = query(
        url,
        "SELECT actor, payload->>'signal' FROM domain_events WHERE aggregate_id = %s AND event_type = 'JobSignalled'",
        (job_id,),
    )
    assert events == [("anonymous", "USR1")]

    # A server killed and started again: the worker's new stream sends every signal again,
    # and the worker delivers each once.
    server.kill()
    server.start()
    server.cli("job", "signal", job_id, "--signal", "SIGUSR1", check=True)
    server.logged(job_id, "got USR1", times=2)
    server.cli("job", "signal", job_id, "--signal", "TERM", check=True)
    wait_settled(url, job_id)
    assert query(url, "SELECT state, exit_code FROM jobs WHERE id = %s", (job_id,)) == [("FAILED", 143)]
    assert server.cli("job", "logs", job_id, check=True).stdout.count("got USR1") == 2

    ended = server.cli("job", "signal", job_id, "--signal", "USR1")
    assert ended.returncode == 2
    assert "only a running job's processes take a signal (FAILED_PRECONDITION)" in ended.stderr
    verified = hodei_server(url, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_job_that_does_not_run_or_a_bad_signal_is_refused_with_nothing_written(server: ServerProcess) -> None:
    url = server.database_url
    held = server.cli("job", "run", "-p", "local", "-c", "true", "--hold", check=True).stdout.strip()
    ((before,),) = query(url, "SELECT count(*) FROM domain_events")
    queued = server.cli("job", "signal", held, "--signal", "HUP")
    assert queued.returncode == 2 and f"job {held} is PENDING: only a running job's processes" in queued.stderr
    for name in ("SEGV", "9", ""):
        refused = server.cli("job", "signal", held, "--signal", name)
        assert refused.returncode == 2 and "a signal is one of HUP, INT, QUIT, KILL, USR1" in refused.stderr
    with server.channel() as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as bad:
            stub.SignalJob(jobs_pb2.SignalJobRequest(job_id=held, signal="SIGBUS"), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = server.cli("job", "signal", "00000000-0000-0000-0000-000000000000", "--signal", "HUP")
    assert unknown.returncode == 2 and "not found" in unknown.stderr
    assert query(url, "SELECT count(*) FROM domain_events") == [(before,)]
    server.cli("job", "cancel", held, check=True)


def test_a_selection_signals_every_running_job_it_matches(server: ServerProcess) -> None:
    """`job signal -l KEY=VALUE --signal NAME`: as `job cancel` takes a selection."""
    url = server.database_url
    run = ("job", "run", "-p", "local", "-c", TRAPS, "--label", "signals=selected")
    job_ids = [server.cli(*run, check=True).stdout.strip() for _ in range(2)]
    for job_id in job_ids:
        wait_running(url, job_id)
        server.logged(job_id, "ready")
    sent = server.cli("job", "signal", "-l", "signals=selected", "--state", "RUNNING", "--signal", "USR1", check=True)
    assert sorted(sent.stderr.splitlines()) == sorted(
        f"Job {job_id} SIGUSR1 sent to its processes" for job_id in job_ids
    )
    for job_id in job_ids:
        server.logged(job_id, "got USR1")
    server.cli("job", "cancel", "-l", "signals=selected", check=True)
    for job_id in job_ids:
        wait_settled(url, job_id)
