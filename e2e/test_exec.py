"""`job exec ID -- COMMAND` (kubectl exec, docker exec): a command run in a running job's
worker as the job's own — its user, directory, environment, secrets masked — whose output
and exit code come back to the one who asked; each asked for and ended in the job's
history; a command cut off by its timeout or by its job's end says so; the worker's answer
survives a server killed while it runs; bad requests are refused with nothing written."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import requests

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.testing import ServerProcess, eventually, hodei_server, query, wait_running, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_SIM_ENABLED": "1"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env, http=True) as process:
        yield process


def running(server: ServerProcess, *options: str) -> str:
    job_id = server.cli("job", "run", "-p", "local", *options, check=True).stdout.strip()
    wait_running(server.database_url, job_id)
    return job_id


def execs(server: ServerProcess, job_id: str) -> list[tuple[str, str | None, dict[str, object]]]:
    return [
        (event_type, actor, payload)
        for event_type, actor, payload in query(
            server.database_url,
            "SELECT event_type, actor, payload FROM domain_events WHERE aggregate_id = %s "
            "AND event_type LIKE 'JobExec%%' ORDER BY aggregate_version",
            (job_id,),
        )
    ]


def test_a_command_runs_as_the_job_in_its_directory_and_environment(server: ServerProcess) -> None:
    job_id = running(
        server, "-c", "echo $$ > pid; sleep 60", "--working-dir", "/tmp/exec-here", "-e", "COLOR=teal",
        "--secret", "TOKEN=hunter2-secret",
    )  # fmt: skip
    shown = "echo user=$(id -un) dir=$(pwd) color=$COLOR token=$TOKEN; cat /proc/$(cat pid)/cmdline | tr '\\0' ' '"
    ran = server.cli("job", "exec", job_id, "--", "sh", "-c", f"{shown}; echo oops >&2; exit 3")
    assert ran.returncode == 3
    assert ran.stdout == ("user=nobody dir=/tmp/exec-here color=teal token=***\n/bin/sh -c echo $$ > pid; sleep 60 ")
    assert ran.stderr == "oops\n[hodei] exited with code 3\n"

    # The history: who asked for what, in which attempt, and how it ended (the worker said).
    [(requested, by, asked), (ended, worker, how)] = execs(server, job_id)
    assert (requested, by, asked) == (
        "JobExecRequested",
        "anonymous",
        {"index": 0, "attempt": 1, "argv": ["sh", "-c", f"{shown}; echo oops >&2; exit 3"], "timeout_seconds": 60},
    )
    assert (ended, str(worker).startswith("worker:")) == ("JobExecEnded", True)
    printed = len(ran.stdout.replace("***", "hunter2-secret"))  # what it printed, before the mask
    assert how == {
        "index": 0, "exit_code": 3, "message": "exited with code 3", "stdout_bytes": printed, "stderr_bytes": 5
    }  # fmt: skip
    [(entry,)] = query(server.database_url, "SELECT execs -> 0 FROM jobs WHERE id = %s", (job_id,))
    assert (entry["by"], entry["exit_code"], entry["argv"][0]) == ("anonymous", 3, "sh")

    as_json = server.cli("-o", "json", "job", "exec", job_id, "--", "printf", "a\\377b")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {
        "index": 1,
        "exit_code": 0,
        "message": "exited with code 0",
        "stdout": "a\ufffdb",
        "stderr": "",
        "stdout_bytes": 3,
        "stderr_bytes": 0,
    }
    masked = server.cli_bytes("job", "exec", job_id, "--", "printf", "a\\377b")
    assert masked.stdout == "a\ufffdb".encode()  # read as text, to mask the job's secrets

    # The console's Run command: a shell line, its output on a page of its own.
    page = requests.post(f"{server.http_url}/jobs/{job_id}/exec", data={"command": "echo $COLOR; echo oops >&2"})
    assert page.status_code == 200
    assert '<pre id="exec-stdout">teal\n</pre>' in page.text and '<pre id="exec-stderr">oops\n</pre>' in page.text

    # What each printed was for its asker alone: taken, nothing of it is kept.
    assert list((server.log_dir / "artifacts" / job_id / "execs").iterdir()) == []
    # `job describe` lists them (and the console's job page): who looked inside the job.
    described = server.cli("job", "describe", job_id, check=True).stdout
    assert "Commands run in it (job exec)" in described
    assert "by anonymous (attempt 1): printf 'a\\377b' -> exited with code 0, 3 bytes out" in described
    assert (
        "by anonymous (attempt 1): sh -c 'echo $COLOR; echo oops >&2' -> exited with code 0, 5 bytes out, 5 bytes err"
        in (described)
    )
    [first, *_] = json.loads(server.cli("-o", "json", "job", "describe", job_id, check=True).stdout)["execs"]
    assert (first["index"], first["exit_code"], first["requested_by"], first["stderr_bytes"]) == (0, 3, "anonymous", 5)
    assert 'id="execs"' in requests.get(f"{server.http_url}/jobs/{job_id}").text

    missing = server.cli("job", "exec", job_id, "--", "no-such-program", "--server", "x")
    assert missing.returncode == 127
    assert missing.stderr == "[hodei] cannot start no-such-program: No such file or directory\n"
    server.cli("job", "cancel", job_id, check=True)
    wait_settled(server.database_url, job_id)
    verified = hodei_server(server.database_url, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_command_past_its_timeout_or_its_jobs_end_is_killed_saying_so(server: ServerProcess) -> None:
    job_id = running(server, "-c", "sleep 4")
    timed_out = server.cli("job", "exec", job_id, "--timeout", "1s", "--", "sh", "-c", "echo begun; sleep 30")
    assert (timed_out.returncode, timed_out.stdout) == (124, "begun\n")
    assert timed_out.stderr == "[hodei] timed out after 1s\n"
    outlived = server.cli("job", "exec", job_id, "--", "sleep", "60")
    assert (outlived.returncode, outlived.stderr) == (137, "[hodei] killed: the job's command ended\n")
    wait_settled(server.database_url, job_id)
    assert query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
    ended = server.cli("job", "exec", job_id, "--", "true")
    assert ended.returncode == 2
    assert f"job {job_id} is SUCCEEDED: a command runs only beside a running job's" in ended.stderr


def test_a_long_output_is_cut_and_the_cut_said_and_bytes_stay_bytes(server: ServerProcess) -> None:
    job_id = running(server, "-c", "sleep 60")
    ran = server.cli_bytes("job", "exec", job_id, "--", "sh", "-c", "head -c 600000 /dev/zero | tr '\\0' a")
    assert ran.returncode == 0
    assert ran.stdout == b"a" * 512 * 1024
    assert ran.stderr == b"[hodei] stdout cut: its first 512.0 KiB of 585.9 KiB shown\n"
    raw = server.cli_bytes("job", "exec", job_id, "--", "printf", "a\\377b")
    assert raw.stdout == b"a\xffb"  # a job without secrets: the bytes as they were
    server.cli("job", "cancel", job_id, check=True)


def test_the_answer_outlives_a_server_killed_while_the_command_runs(server: ServerProcess) -> None:
    """The worker keeps a command's result until a server acknowledges it: the stream it
    opens with the server started again carries it, and the end is recorded."""
    job_id = running(server, "-c", "sleep 60")
    asked = threading.Thread(target=server.cli, args=("job", "exec", job_id, "--", "sh", "-c", "sleep 3; echo late"))
    asked.start()
    deadline = time.monotonic() + 30
    while not execs(server, job_id):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    server.kill()  # the asker's call ends with it
    asked.join(30)
    server.start()
    while len(execs(server, job_id)) < 2:
        assert time.monotonic() < deadline + 30
        time.sleep(0.2)
    [_, (_, _, how)] = execs(server, job_id)
    assert how == {"index": 0, "exit_code": 0, "message": "exited with code 0", "stdout_bytes": 5, "stderr_bytes": 0}
    again = server.cli("job", "exec", job_id, "--", "echo", "again")
    assert (again.returncode, again.stdout) == (0, "again\n")
    server.cli("job", "cancel", job_id, check=True)


def test_a_command_asked_of_either_of_two_servers_reaches_the_worker(server: ServerProcess) -> None:
    """Two servers of one installation: the worker's stream is held by one of them; asked
    of either, the command runs and its answer (written by the one the worker tells, in the
    log directory they share) comes back."""
    with ServerProcess(server.database_url, server.log_dir, {"HODEI_SIM_ENABLED": "1"}) as other:
        job_id = running(server, "-c", "sleep 60")
        for asked in (server, other, server, other):
            ran = asked.cli("job", "exec", job_id, "--", "sh", "-c", "echo $HODEI_JOB_ID")
            assert (ran.returncode, ran.stdout) == (0, f"{job_id}\n"), ran.stderr
        server.cli("job", "cancel", job_id, check=True)
    assert len(execs(server, job_id)) == 8


def test_a_sim_worker_answers_that_it_runs_no_commands(server: ServerProcess) -> None:
    job_id = server.cli("job", "run", "-p", "sim", "-c", "x", "-e", "HODEI_SIM_SECONDS=30", check=True).stdout.strip()
    wait_running(server.database_url, job_id)
    ran = server.cli("job", "exec", job_id, "--", "id")
    assert (ran.returncode, ran.stderr) == (126, "[hodei] not started: a sim worker runs no commands\n")
    server.cli("job", "cancel", job_id, check=True)


def test_bad_requests_are_refused_with_nothing_written(server: ServerProcess) -> None:
    job_id = running(server, "-c", "sleep 60")
    ((before,),) = query(server.database_url, "SELECT count(*) FROM domain_events")
    for argv, said in (
        (["job", "exec", job_id], "give the command to run: job exec ID -- COMMAND [ARGS...]"),
        (["job", "exec", job_id, "--", ""], "give the command to run"),
        (["job", "exec", job_id, "--timeout", "0", "--", "id"], "--timeout must be a positive number"),
        (["job", "exec", job_id, "--timeout", "2h", "--", "id"], "the timeout is 1 to 3600 seconds, got 7200"),
        (["job", "exec", job_id, "--timeout", "soon", "--", "id"], "--timeout"),
        (["job", "exec", "00000000-0000-0000-0000-000000000000", "--", "id"], "not found"),
        (["job", "exec", job_id, "id"], "unrecognized arguments: id"),
    ):
        refused = server.cli(*argv)
        assert refused.returncode == 2, (argv, refused.stderr)
        assert said in refused.stderr, (argv, refused.stderr)
    assert query(server.database_url, "SELECT count(*) FROM domain_events") == [(before,)]
    server.cli("job", "cancel", job_id, check=True)


def test_a_secrets_value_written_out_is_refused_before_the_history_keeps_it(server: ServerProcess) -> None:
    """What a job's spec and a `job exec` line say is kept as said, for good; a secret is
    kept only sealed. A value written out (a submission's, an exec's) is refused with the
    way to say it, and nothing is written."""
    value = "open-s3same-now"
    ((before,),) = query(server.database_url, "SELECT count(*) FROM domain_events")
    submitted = server.cli("job", "run", "-p", "local", "--secret", f"PW={value}", "-c", f"login {value}")
    assert submitted.returncode == 2
    assert "the value of secret PW is written in the job's command: write $PW there instead" in submitted.stderr
    spec = common_pb2.JobSpec(name="x", command="true", args=[value], timeout_seconds=60, provider="local")
    asked_directly = jobs_pb2.QueueJobRequest(spec=spec, secrets={"PW": value})  # the server's own check
    with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        jobs_pb2_grpc.JobExecutionServiceStub(channel).QueueJob(asked_directly, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the value of secret PW is written in the job's args[0]" in str(refused.value.details())
    assert query(server.database_url, "SELECT count(*) FROM domain_events") == [(before,)]

    job_id = running(server, "--secret", f"PW={value}", "-c", "sleep 60")
    ((before,),) = query(server.database_url, "SELECT count(*) FROM domain_events")
    asked = server.cli("job", "exec", job_id, "--", "sh", "-c", f'test "$PW" = {value}')
    assert asked.returncode == 2
    assert "the value of secret PW is written in the command's word 2: write $PW there instead" in asked.stderr
    assert "a command reads a variable through a shell: job exec ID -- sh -c '… \"$NAME\" …'" in asked.stderr
    assert query(server.database_url, "SELECT count(*) FROM domain_events") == [(before,)]
    said = server.cli("job", "exec", job_id, "--", "sh", "-c", 'test "${PW#open-}" = s3same-now && echo same')
    assert (said.returncode, said.stdout) == (0, "same\n")
    assert query(
        server.database_url, "SELECT count(*) FROM domain_events WHERE payload::text LIKE %s", (f"%{value}%",)
    ) == [(0,)]
    server.cli("job", "cancel", job_id, check=True)


def test_a_frozen_worker_that_never_answers_ends_the_call_saying_so(
    fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The agent stopped (SIGSTOP) as the command is asked for: the call ends after the
    command's timeout and the worker's margin, saying that it did not answer; thawed, the
    worker runs it after all, and its end is recorded. (A server of its own, whose heartbeat
    timeout outlasts the freeze: a worker frozen past it is lost, and its job with it.)"""
    env = {"HODEI_HEARTBEAT_TIMEOUT": "120"}
    with ServerProcess(fresh_database_url, tmp_path_factory.mktemp("frozen"), env) as server:
        frozen(server)


def frozen(server: ServerProcess) -> None:
    job_id = running(server, "-c", "sleep 60")
    [(resource,)] = query(
        server.database_url, "SELECT provider_resource_id FROM workers WHERE job_id = %s AND state = 'BUSY'", (job_id,)
    )
    agent = int(resource.removeprefix("pid-"))
    os.kill(agent, signal.SIGSTOP)
    try:
        asked = server.cli("job", "exec", job_id, "--timeout", "1s", "--", "echo", "late")
    finally:
        os.kill(agent, signal.SIGCONT)
    assert asked.returncode == 1
    assert (
        f"command 0 in job {job_id}: its worker did not say how it ended within 16s "
        "(its timeout 1s and 15s more) (DEADLINE_EXCEEDED)"
    ) in asked.stderr
    eventually(lambda: len(execs(server, job_id)) == 2, 30, what="the thawed worker's answer")
    [_, (_, _, how)] = execs(server, job_id)
    assert how == {"index": 0, "exit_code": 0, "message": "exited with code 0", "stdout_bytes": 5, "stderr_bytes": 0}
    server.cli("job", "cancel", job_id, check=True)


def test_a_worker_killed_while_a_command_runs_ends_the_call_saying_the_job_ended(server: ServerProcess) -> None:
    """The agent SIGKILLed mid-command: the job fails (its worker is gone), and the call
    says the job ended before the command did, with no answer from its worker."""
    job_id = running(server, "-c", "sleep 60")
    [(resource,)] = query(
        server.database_url, "SELECT provider_resource_id FROM workers WHERE job_id = %s AND state = 'BUSY'", (job_id,)
    )
    asking = server.spawn("job", "exec", job_id, "--", "sleep", "30")
    eventually(lambda: bool(execs(server, job_id)), 30, what="the command to be asked for")
    time.sleep(0.5)  # begun by the worker
    os.kill(int(resource.removeprefix("pid-")), signal.SIGKILL)
    _, stderr = asking.communicate(timeout=90)
    assert asking.returncode == 2, stderr
    assert f"job {job_id} is FAILED: it ended before command 0 did, and its worker did not say how that ended" in stderr
    assert [event_type for event_type, _, _ in execs(server, job_id)] == ["JobExecRequested"]
