"""The seed's Phase 5 and 6 on the local provider, and the failure paths end to end:
real server, real worker processes, real CLI."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import requests

from e2e.seed import check_job_get, check_phase6, phase5_jobs, submit
from e2e.test_console import samples
from hodei.testing import ServerProcess, eventually, query, wait_running, wait_settled, wait_terminal

LOCAL_ID = "33333333-3333-3333-3333-333333333333"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("logs")
    env = {"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "3", "HODEI_KILL_GRACE": "1"}
    with ServerProcess(database_url, log_dir, env, http=True) as process:
        yield process
    print(process.logs()[-5000:])


def agent_title(job_id: str) -> bytes:
    """How a forked agent names itself (hodei_worker.template)."""
    return f"hodei-worker job={job_id} ".encode()


def job_processes(job_id: str) -> list[int]:
    """Live processes of this job: its agent (by its title) and the job's own (by the
    job id in their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            title = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        mine = f"HODEI_JOB_ID={job_id}".encode() in environ.split(b"\0") or title.startswith(agent_title(job_id))
        if mine and state != "Z":
            found.append(int(entry.name))
    return found


def agent_pid(job_id: str) -> int:
    def find() -> int | None:
        for pid in job_processes(job_id):
            with contextlib.suppress(OSError):  # the job's own may come and go
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(agent_title(job_id)):
                    return pid
        return None

    return eventually(find, 30, what=f"the worker agent of job {job_id}")


def run_waiting(server: ServerProcess, url: str, command: str, timeout: str) -> tuple[int, str]:
    """`job run --wait` on the local provider: the CLI's exit code and the settled job's id."""
    result = server.cli("job", "run", "--provider", "local", "--command", command, "--timeout", timeout, "--wait")
    job_id = result.stdout.strip()
    assert job_id, result.stderr
    wait_settled(url, job_id)
    return result.returncode, job_id


def test_phase5_and_phase6_on_the_local_provider(server: ServerProcess, database_url: str) -> None:
    jobs = {job.title: (job, submit(server, job)) for job in phase5_jobs("local")}
    for job, job_id in jobs.values():
        wait_settled(database_url, job_id, timeout=90)
        check_job_get(server, job_id)
        check_phase6(database_url, job_id, "local", LOCAL_ID, job)


def test_a_non_zero_exit_fails_the_job_with_its_code(server: ServerProcess, database_url: str) -> None:
    returncode, job_id = run_waiting(server, database_url, "echo about to fail; exit 3", "30")
    assert returncode == 3
    assert query(database_url, "SELECT state, exit_code, error_message FROM jobs WHERE id = %s", (job_id,)) == [
        ("FAILED", 3, "exited with code 3")
    ]
    shown = check_job_get(server, job_id, "FAILED", 5)
    assert "Exit code: 3" in shown
    # What it used, on the console's job page too (e2e/test_isolation.py checks the figures).
    used = re.search(r"^Used: (.+ MiB peak memory \(attempt 1\))$", shown, re.M)
    assert used, shown
    assert f'<td id="used">{used[1]}</td>' in requests.get(f"{server.http_url}/jobs/{job_id}", timeout=10).text


@pytest.mark.parametrize(
    ("command", "code", "said"),
    [
        ("kill -SEGV $$", 139, "exited with code 139: killed by SIGSEGV"),
        ("no-such-command", 127, "exited with code 127 (the shell's code for a command not found)"),
        ("/etc/passwd", 126, "exited with code 126 (the shell's code for a command it found but could not run)"),
    ],
    ids=["signal", "not-found", "not-executable"],
)
def test_a_failure_says_what_its_code_means_where_the_code_tells(
    server: ServerProcess, database_url: str, command: str, code: int, said: str
) -> None:
    """It said only "exited with code 139" (a signal the agent saw its command die of)."""
    returncode, job_id = run_waiting(server, database_url, command, "30")
    assert returncode == code
    assert query(database_url, "SELECT exit_code, error_message FROM jobs WHERE id = %s", (job_id,)) == [(code, said)]


def test_a_timeout_ends_the_job_and_its_whole_process_group(server: ServerProcess, database_url: str) -> None:
    returncode, job_id = run_waiting(server, database_url, "sleep 300 & sleep 300; wait", "1.5")
    assert returncode == 124
    state, exit_code = query(database_url, "SELECT state, exit_code FROM jobs WHERE id = %s", (job_id,))[0]
    assert state == "TIMEOUT"
    assert exit_code == 143  # SIGTERM: 128 + 15
    assert job_processes(job_id) == []


def test_cancelling_a_running_job_stops_its_processes(server: ServerProcess, database_url: str) -> None:
    job_id = server.cli(
        "job", "run", "--provider", "local", "--command", "sleep 300", "--timeout", "600", check=True
    ).stdout.strip()
    wait_running(database_url, job_id)
    assert job_processes(job_id)
    cancelled = server.cli("job", "cancel", "--id", job_id, "--reason", "no longer needed", check=True)
    assert "CANCELLED (Status Code: 6)" in cancelled.stderr
    wait_settled(database_url, job_id)
    assert query(database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,)) == [
        ("CANCELLED", "no longer needed")
    ]
    eventually(lambda: job_processes(job_id) == [], 15, what="the job's processes to end")
    again = server.cli("job", "cancel", "--id", job_id)
    assert again.returncode != 0
    assert "already ended CANCELLED" in again.stderr


def refuses_bad_graces(server: ServerProcess, database_url: str, job_id: str) -> None:
    """The server checks a cancel's grace itself (a client other than our CLI) and
    changes nothing when it is refused."""
    import grpc

    from hodei._proto import jobs_pb2, jobs_pb2_grpc

    events = "SELECT count(*) FROM domain_events WHERE aggregate_id = %s"
    before = query(database_url, events, (job_id,))
    with grpc.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        for grace in (-1.0, float("nan"), 8 * 86400.0):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id, grace_seconds=grace))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert f"the grace must be 0 to 604800 seconds, got {grace:g}" in (refused.value.details() or "")
    assert query(database_url, events, (job_id,)) == before


# A job that takes 2 s to clean up after SIGTERM: more than this module's HODEI_KILL_GRACE.
CLEANS_UP = "trap 'echo stopping; sleep 2; echo cleaned up; exit 3' TERM; echo started; while :; do sleep 0.1; done"


def test_a_cancels_grace_lets_the_job_clean_up_and_force_kills_at_once(
    server: ServerProcess, database_url: str
) -> None:
    jobs = {
        how: server.cli("job", "run", "-p", "local", "-c", CLEANS_UP, "--timeout", "600", check=True).stdout.strip()
        for how in (("--grace", "30s"), ("--force",), ())
    }

    def started(job_id: str) -> bool:
        return server.cli("job", "logs", job_id).stdout == "started\n"

    for job_id in jobs.values():
        eventually(partial(started, job_id), 30)
    refuses_bad_graces(server, database_url, next(iter(jobs.values())))
    follower = server.spawn("job", "logs", jobs["--grace", "30s"], "--follow")
    assert follower.stdout is not None and follower.stdout.readline() == "started\n"  # it follows
    for how, job_id in jobs.items():
        assert "CANCELLED (Status Code: 6)" in server.cli("job", "cancel", job_id, *how, check=True).stderr
    # It keeps following the cancelled job while its processes stop, and ends with its log.
    assert follower.communicate(timeout=60)[0].splitlines() == ["stopping", "cleaned up"]
    for job_id in jobs.values():
        wait_settled(database_url, job_id)
        assert query(database_url, "SELECT state, exit_code FROM jobs WHERE id = %s", (job_id,)) == [
            ("CANCELLED", None)
        ]
        assert job_processes(job_id) == []

    def after_the_cancel(job_id: str) -> list[tuple[str, object]]:
        """The job's and its worker's events after its cancel: (type, exit code)."""
        return query(
            database_url,
            "SELECT event_type, payload->'exit_code' FROM domain_events WHERE (aggregate_id = %s OR "
            "correlation_id = %s) AND aggregate_type IN ('Job', 'Worker') AND position > (SELECT position "
            "FROM domain_events WHERE aggregate_id = %s AND payload->>'new_state' = 'CANCELLED') ORDER BY position",
            (job_id, job_id, job_id),
        )

    graceful, forced, default = jobs.values()
    # The worker stays until the job's processes stopped: its whole cleanup is in the stored log.
    assert server.cli("job", "logs", graceful).stdout.splitlines() == ["started", "stopping", "cleaned up"]
    assert after_the_cancel(graceful) == [
        ("JobStopped", 3),
        ("JobLogsPersisted", None),
        ("WorkerTerminated", None),
    ]
    # SIGKILL at once (no SIGTERM: no trap); its worker is kept for its report all the
    # same, or the provider's own stop of a released worker could SIGTERM the job first.
    assert server.cli("job", "logs", forced).stdout.splitlines() == ["started"]
    assert after_the_cancel(forced)[0] == ("JobStopped", 137)
    # No grace asked: the server's (HODEI_KILL_GRACE, 1 s here) cuts the cleanup short.
    assert server.cli("job", "logs", default).stdout.splitlines() == ["started", "stopping"]
    assert after_the_cancel(default)[0] == ("JobStopped", 137)
    described = server.cli("job", "describe", graceful, check=True).stdout
    assert described.index(" stopped (attempt 1): exited with code 3; ") < described.index(
        " worker_released (attempt 1)"
    )
    assert "Stopping:" not in described
    assert "\nExit code: - (cancelled; its processes exited with code 3)\n" in described
    # What the stopped processes used, as a finished attempt's (JobStopped carries it).
    assert re.search(r"^Used: \d+\.\d\d s CPU, \d+\.\d MiB peak memory \(attempt 1\)$", described, re.M)


def test_a_worker_lost_during_a_cancels_grace_is_not_waited_for(server: ServerProcess, database_url: str) -> None:
    """The job ignores SIGTERM and its grace is long: the worker is kept for it, but once
    it is lost, nothing waits for its report any more."""
    ignores_term = "trap '' TERM; echo started; while :; do sleep 0.1; done"
    job_id = server.cli("job", "run", "-p", "local", "-c", ignores_term, "--timeout", "600", check=True).stdout.strip()
    eventually(lambda: server.cli("job", "logs", job_id).stdout == "started\n", 30)
    server.cli("job", "cancel", job_id, "--grace", "10m", check=True)
    time.sleep(2)  # past this module's HODEI_KILL_GRACE: still there, in its grace
    assert query(database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("BUSY",)]
    assert len(job_processes(job_id)) > 1  # the agent and the job
    stopping = "\nStopping: its processes are ending in their cancel's grace\n"
    assert stopping in server.cli("job", "get", job_id, check=True).stdout
    page = f"{server.http_url}/jobs/{job_id}"
    assert 'id="stopping"' in requests.get(page, timeout=10).text  # the console says so too
    os.kill(agent_pid(job_id), signal.SIGKILL)
    wait_settled(database_url, job_id, timeout=30)  # at once, or at its heartbeat timeout (3 s): not the grace
    assert "Stopping:" not in server.cli("job", "get", job_id, check=True).stdout
    assert 'id="stopping"' not in requests.get(page, timeout=10).text
    assert query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("CANCELLED",)]
    (worker,) = query(database_url, "SELECT state, error_message FROM workers WHERE job_id = %s", (job_id,))
    assert worker[0] == "TERMINATED" and "exited with code -9" in worker[1]
    eventually(lambda: job_processes(job_id) == [], 15, what="the job's processes to be killed")


def test_a_killed_worker_fails_the_job_through_recovery(server: ServerProcess, database_url: str) -> None:
    """...and leaves none of the job's files: its home, which the agent removes when it
    ends, is removed with the worker once the agent could not (it was left in /tmp)."""
    command = "head -c 1000 /dev/zero > data; echo $HOME; sleep 300"
    job_id = server.cli(
        "job", "run", "--provider", "local", "--command", command, "--timeout", "600", check=True
    ).stdout.strip()
    wait_running(database_url, job_id)
    shown = server.logged(job_id, "/hodei-worker-").splitlines()
    home = Path(next(line for line in shown if "/hodei-worker-" in line))
    assert (home / "data").stat().st_size == 1000
    lost = ("hodei_workers_lost_total", (("provider", "local"),))
    before = samples(requests.get(f"{server.http_url}/metrics", timeout=10).text).get(lost, 0.0)
    os.kill(agent_pid(job_id), signal.SIGKILL)
    assert wait_terminal(database_url, job_id, timeout=30) == "FAILED"  # long before its own 600 s
    wait_settled(database_url, job_id)
    assert samples(requests.get(f"{server.http_url}/metrics", timeout=10).text)[lost] == before + 1
    (reason,) = query(database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
    assert "was lost" in reason
    assert ("RECOVERY", "COMPLETED") in query(
        database_url, "SELECT saga_type, state FROM sagas WHERE correlation_id = %s", (job_id,)
    )
    assert query(database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]
    eventually(lambda: job_processes(job_id) == [], 15, what="the orphaned job processes to be killed")
    assert not home.exists()


def test_a_frozen_worker_is_lost_within_the_heartbeat_timeout(server: ServerProcess, database_url: str) -> None:
    job_id = server.cli(
        "job", "run", "--provider", "local", "--command", "sleep 300", "--timeout", "600", check=True
    ).stdout.strip()
    wait_running(database_url, job_id)
    pid = agent_pid(job_id)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_terminal(database_url, job_id, timeout=30) == "FAILED"  # long before its own 600 s
        (reason,) = query(database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert "no heartbeat" in reason  # the liveness check, not the job's timeout, ended it
    finally:
        os.kill(pid, signal.SIGCONT) if pid in job_processes(job_id) else None
    wait_settled(database_url, job_id)
    eventually(lambda: job_processes(job_id) == [], 15, what="the frozen worker to be destroyed")


def test_a_lost_worker_is_retried_when_attempts_remain(
    server: ServerProcess, database_url: str, shared_dir: Path
) -> None:
    marker = shared_dir / "first-attempt"
    command = f"if [ -f {marker} ]; then echo second attempt; else touch {marker}; sleep 300; fi"
    job_id = server.cli(
        "job", "run", "--provider", "local", "--command", command, "--timeout", "600", "--max-attempts", "2", check=True
    ).stdout.strip()
    wait_running(database_url, job_id)
    eventually(marker.exists, 10)
    os.kill(agent_pid(job_id), signal.SIGKILL)
    assert wait_terminal(database_url, job_id, timeout=60) == "SUCCEEDED"
    wait_settled(database_url, job_id)
    assert query(database_url, "SELECT attempt FROM jobs WHERE id = %s", (job_id,)) == [(2,)]
    sagas = query(
        database_url,
        "SELECT saga_type, state, attempt FROM sagas WHERE correlation_id = %s ORDER BY started_at",
        (job_id,),
    )
    assert sagas == [
        ("PROVISIONING", "COMPLETED", 1),
        ("EXECUTION", "COMPLETED", 1),
        ("RECOVERY", "COMPLETED", 1),
        ("PROVISIONING", "COMPLETED", 2),
        ("EXECUTION", "COMPLETED", 2),
    ]
    logs = server.cli("job", "logs", "--id", job_id, check=True)
    assert "second attempt" in logs.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["job", "run", "--provider", "local", "--command", "", "--timeout", "5"], "command must not be empty"),
        (["job", "run", "--provider", "local", "--command", "true", "--timeout", "-5"], "--timeout must be a positive"),
        (["job", "run", "--provider", "local", "--command", "true", "--timeout", "0"], "--timeout must be a positive"),
        (["job", "run", "-p", "local", "-c", "true", "--queue-timeout", "0"], "--queue-timeout must be a positive"),
        (["job", "run", "-p", "local", "-c", "true", "--max-attempts", "0"], "--max-attempts: takes a whole number"),
        (["job", "run", "--provider", "local", "--command", "true", "--env", "FOO"], "malformed --env item `FOO`"),
        (["job", "run", "--provider", "local", "--command", "true", "--env", "1A=x"], "malformed --env item `1A=x`"),
        (["job", "run", "-p", "local", "-c", "true", "--env", "HODEI_JOB_ID=x"], "HODEI_JOB_ID is set by the platform"),
        (["job", "run", "-p", "local", "--script", "/bin/true"], "--script: /bin/true is not UTF-8 text (byte "),
        (
            ["job", "run", "-p", "local", "-c", "true", "--env-file", "/nonexistent"],
            "cannot read /nonexistent: No such",
        ),
        (["job", "run", "--provider", "nope", "--command", "true"], "unknown provider `nope`"),
        (["job", "run", "--provider", "local", "--command", "bash", "--args", "-c 'unclosed"], "malformed --args"),
        (["job", "get", "--id", "00000000-0000-0000-0000-000000000000"], "not found"),
        (["job", "get", "--id", "not-a-uuid"], "not found"),
        (["job", "cancel", "--id", "00000000-0000-0000-0000-000000000000"], "not found"),
        (["job", "logs", "--id", "00000000-0000-0000-0000-000000000000"], "not found"),
        (["job", "get"], "give the job id"),
    ],
)
def test_bad_input_gets_a_clear_error_and_writes_nothing(
    server: ServerProcess, database_url: str, args: list[str], message: str
) -> None:
    before = query(database_url, "SELECT count(*) FROM domain_events")[0][0]
    result = server.cli(*args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert result.stdout == ""
    assert query(database_url, "SELECT count(*) FROM domain_events")[0][0] == before


def test_a_jobs_outputs_are_what_it_wrote_to_hodei_output_its_secrets_masked(
    server: ServerProcess, database_url: str
) -> None:
    """KEY=VALUE lines and KEY<<EOF blocks (GitHub's $GITHUB_OUTPUT), read once the
    command exits whatever its exit code, a secret's value masked as in the log; `job
    output ID KEY` prints one as it was written, `job get` lists them; a file that is not
    outputs keeps none and says why in the job's log; a retried job's are its latest
    attempt's."""
    script = (
        'echo "version=1.2.3" >> "$HODEI_OUTPUT"; echo "token=$API_KEY-used" >> "$HODEI_OUTPUT"; '
        'printf "notes<<EOF\\nfirst line\\nsecond=line\\nEOF\\n" >> "$HODEI_OUTPUT"; exit 3'
    )
    job_id = server.cli(
        "job", "run", "-p", "local", "-c", script, "--secret", "API_KEY=s3cr3t-value", "--wait"
    ).stdout.strip()
    wait_settled(database_url, job_id)
    assert server.cli("job", "output", job_id, "version", check=True).stdout == "1.2.3\n"
    assert server.cli("job", "output", job_id, "token", check=True).stdout == "***-used\n"
    assert server.cli("job", "output", job_id, "notes", check=True).stdout == "first line\nsecond=line\n"
    assert server.cli("job", "output", job_id, check=True).stdout == (
        "notes<<EOF\nfirst line\nsecond=line\nEOF\ntoken=***-used\nversion=1.2.3\n"
    )
    shown = server.cli("job", "get", job_id, check=True).stdout
    assert f"Outputs: notes=first line second=line, token=***-used, version=1.2.3 (`job output {job_id} KEY`)" in shown
    page = requests.get(f"{server.http_url}/jobs/{job_id}", timeout=30).text
    assert (
        '<td id="outputs"><div><code>notes</code> <span class="output">first line\nsecond=line</span></div>'
        '<div><code>token</code> <span class="output">***-used</span></div>'
        '<div><code>version</code> <span class="output">1.2.3</span></div></td>'
    ) in page
    events = query(database_url, "SELECT payload::text FROM domain_events WHERE aggregate_id = %s", (job_id,))
    assert not any("s3cr3t-value" in payload for (payload,) in events)
    missing = server.cli("job", "output", job_id, "nope")
    assert missing.returncode == 2
    assert f"job {job_id} left no output 'nope' in $HODEI_OUTPUT (it left: notes, token, version)" in missing.stderr

    broken = server.cli("job", "run", "-p", "local", "-c", 'echo oops > "$HODEI_OUTPUT"', "--wait").stdout.strip()
    wait_settled(database_url, broken)
    assert server.cli("job", "output", broken, check=True).stdout == ""
    logged = server.cli("job", "logs", broken, check=True).stderr
    assert "[hodei] outputs not kept: line 1 is neither KEY=VALUE nor KEY<<DELIMITER" in logged
    linked = server.cli("job", "run", "-p", "local", "-c", 'ln -s /etc/shadow "$HODEI_OUTPUT"', "--wait").stdout.strip()
    wait_settled(database_url, linked)
    assert "a link is not followed" in server.cli("job", "logs", linked, check=True).stderr
    assert server.cli("job", "output", linked, check=True).stdout == ""

    # Attempt 1 leaves a value and fails; attempt 2 leaves none: the job's outputs are attempt 2's.
    retried = server.cli(
        "job",
        "run",
        "-p",
        "local",
        "--retry",
        "1",
        "--retry-backoff",
        "0",
        "-c",
        '[ "$HODEI_ATTEMPT" = 1 ] && { echo first=1 >> "$HODEI_OUTPUT"; exit 1; }; exit 0',
        "--wait",
    ).stdout.strip()
    wait_settled(database_url, retried)
    assert server.cli("job", "output", retried, "-o", "json", check=True).stdout.strip() == "{}"
    running = server.cli("job", "run", "-p", "local", "-c", "sleep 30", check=True).stdout.strip()
    early = server.cli("job", "output", running, "version")
    assert early.returncode == 2 and "a job's outputs are kept once its command exits" in early.stderr
    server.cli("job", "cancel", running, "--force", check=True)


def test_a_job_started_after_others_reads_their_outputs(server: ServerProcess, database_url: str) -> None:
    """--after: the outputs of the jobs it starts after, each one's latest attempt's, are
    files $HODEI_AFTER_OUTPUTS/<job id>/<KEY> in its home (a step of a pipeline takes the
    version the step before built); a job that left none has an empty directory."""
    build = server.cli(
        "job", "run", "-p", "local", "-c", 'echo version=1.4.2 >> "$HODEI_OUTPUT"', "--wait", check=True
    ).stdout.strip()
    quiet = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True).stdout.strip()
    deploy = server.cli(
        "job",
        "run",
        "-p",
        "local",
        "--after",
        build,
        "--after",
        quiet,
        "--wait",
        "-c",
        f'echo "deploying $(cat "$HODEI_AFTER_OUTPUTS/{build}/version")"; ls -A "$HODEI_AFTER_OUTPUTS/{quiet}" | wc -l;'
        ' ls -ld "$HODEI_AFTER_OUTPUTS" | cut -c1-10',
        check=True,
    ).stdout.strip()
    wait_settled(database_url, deploy)
    assert server.cli("job", "logs", deploy, check=True).stdout == "deploying 1.4.2\n0\ndrwxr-xr-x\n"
    alone = server.cli("job", "run", "-p", "local", "-c", 'echo "[${HODEI_AFTER_OUTPUTS-unset}]"', "--wait", check=True)
    assert server.cli("job", "logs", alone.stdout.strip(), check=True).stdout == "[unset]\n"


def test_follow_streams_the_output_and_exits_with_the_job_code(server: ServerProcess) -> None:
    result = server.cli(
        "job",
        "run",
        "--provider",
        "local",
        "--command",
        "echo out; echo err >&2; sleep 1; echo later; exit 7",
        "--timeout",
        "30",
        "--follow",
    )
    assert result.returncode == 7
    assert result.stdout.splitlines() == ["out", "later"]
    assert "err" in result.stderr.splitlines()


def test_logs_stay_readable_after_the_worker_is_gone(server: ServerProcess, database_url: str) -> None:
    job_id = server.cli(
        "job", "run", "--provider", "local", "--command", "seq 1 500", "--timeout", "30", check=True
    ).stdout.strip()
    wait_settled(database_url, job_id)
    assert job_processes(job_id) == []
    logs = server.cli("job", "logs", "--id", job_id, check=True)
    assert logs.stdout.splitlines() == [str(i) for i in range(1, 501)]
    assert query(database_url, "SELECT entry_count FROM job_log_files WHERE job_id = %s", (job_id,)) == [(500,)]


def test_a_worker_that_never_registers_fails_the_job_within_the_deadline(
    pg_server: str, template_database: str, tmp_path: Path
) -> None:
    from conftest import new_database

    url = new_database(pg_server, template_database)
    env = {"HODEI_LOCAL_WORKER_COMMAND": "sleep 600", "HODEI_REGISTRATION_TIMEOUT": "3", "HODEI_KILL_GRACE": "1"}
    with ServerProcess(url, tmp_path, env) as silent:
        job_id = silent.cli(
            "job", "run", "--provider", "local", "--command", "true", "--timeout", "30", check=True
        ).stdout.strip()
        assert wait_terminal(url, job_id, timeout=30) == "FAILED"
        wait_settled(url, job_id)
        (reason,) = query(url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert "wait_for_registration failed" in reason and "deadline" in reason
        assert query(url, "SELECT saga_type, state FROM sagas WHERE correlation_id = %s", (job_id,)) == [
            ("PROVISIONING", "FAILED")
        ]
        steps = query(
            url,
            "SELECT st.step_name, st.state FROM saga_steps st JOIN sagas s ON s.id = st.saga_id "
            "WHERE s.correlation_id = %s ORDER BY step_order",
            (job_id,),
        )
        assert steps == [
            ("select_provider", "COMPENSATED"),
            ("wait_for_slot", "COMPENSATED"),
            ("register_worker", "COMPENSATED"),
            ("create_worker", "COMPENSATED"),
            ("wait_for_registration", "FAILED"),
        ]
        assert query(url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]
        eventually(lambda: job_processes(job_id) == [], 10, what="the silent worker process to be killed")


def test_a_server_killed_mid_job_is_restarted_and_the_job_still_succeeds(
    pg_server: str, template_database: str, tmp_path: Path
) -> None:
    from conftest import new_database

    url = new_database(pg_server, template_database)
    # A short lease: rows the killed server had claimed are re-delivered when it expires.
    env = {"HODEI_HEARTBEAT_TIMEOUT": "15", "HODEI_KILL_GRACE": "1", "HODEI_RELAY_LEASE": "3"}
    server = ServerProcess(url, tmp_path, env).start()
    try:
        command = "echo before; sleep 4; echo after"
        job_id = server.cli(
            "job", "run", "--provider", "local", "--command", command, "--timeout", "60", check=True
        ).stdout.strip()
        wait_running(url, job_id)
        server.kill()
        server.start()
        assert wait_terminal(url, job_id, timeout=60) == "SUCCEEDED"
        wait_settled(url, job_id)
        assert server.cli("job", "logs", "--id", job_id, check=True).stdout.splitlines() == ["before", "after"]
        assert query(url, "SELECT saga_type, state FROM sagas WHERE correlation_id = %s ORDER BY 1", (job_id,)) == [
            ("EXECUTION", "COMPLETED"),
            ("PROVISIONING", "COMPLETED"),
        ]
        eventually(lambda: job_processes(job_id) == [], 15)
    finally:
        server.stop()


def test_jobs_survive_the_database_connections_being_killed(server: ServerProcess, database_url: str) -> None:
    job_id = server.cli(
        "job", "run", "--provider", "local", "--command", "echo one; sleep 2; echo two", "--timeout", "60", check=True
    ).stdout.strip()
    wait_running(database_url, job_id)
    killed = query(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'hodei%%'",
    )
    assert len(killed) >= 2
    assert wait_terminal(database_url, job_id, timeout=60) == "SUCCEEDED"
    wait_settled(database_url, job_id)
    assert server.cli("job", "logs", "--id", job_id, check=True).stdout.splitlines() == ["one", "two"]


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ({"command": "", "timeout_seconds": 5}, "INVALID_ARGUMENT", "command must not be empty"),
        ({"command": "true", "timeout_seconds": -1}, "INVALID_ARGUMENT", "timeout must be a positive"),
        (
            {"command": "true", "timeout_seconds": 5, "env": {"BAD-KEY": "x"}},
            "INVALID_ARGUMENT",
            "`BAD-KEY` is not valid",
        ),
        (
            {"command": "true", "timeout_seconds": 5, "provider": "fargate"},
            "INVALID_ARGUMENT",
            "unknown provider `fargate`",
        ),
        ({"command": "true", "timeout_seconds": 5, "working_dir": "relative"}, "INVALID_ARGUMENT", "absolute path"),
    ],
)
def test_the_api_refuses_bad_jobs_before_writing(
    server: ServerProcess, database_url: str, spec: dict[str, object], code: str, message: str
) -> None:
    """The server validates on its own: a client other than our CLI gets the same errors."""
    import grpc

    from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc

    before = query(database_url, "SELECT count(*) FROM domain_events")[0][0]
    with grpc.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.QueueJob(jobs_pb2.QueueJobRequest(spec=common_pb2.JobSpec(name="bad", **spec)))  # type: ignore[arg-type]
    assert refused.value.code().name == code
    assert message in (refused.value.details() or "")
    assert query(database_url, "SELECT count(*) FROM domain_events")[0][0] == before


def test_operator_commands(server: ServerProcess, database_url: str) -> None:
    import json

    returncode, job_id = run_waiting(server, database_url, "true", "30")
    assert returncode == 0
    metrics = json.loads(server.cli("metrics", "-o", "json", check=True).stdout)
    assert int(metrics["relay_handled"]) > 0
    assert int(metrics["jobs_by_state"]["SUCCEEDED"]) >= 1
    assert int(metrics["sagas_by_state"]["COMPLETED"]) >= 2
    assert int(metrics["outbox_dead_letter"]) == 0
    queue = json.loads(server.cli("queue", "-o", "json", check=True).stdout)
    assert int(queue["succeeded"]) == query(database_url, "SELECT count(*) FROM jobs WHERE state = 'SUCCEEDED'")[0][0]
    workers = json.loads(server.cli("worker", "list", "--state", "terminated", "-o", "json", check=True).stdout)
    assert any(w["job_id"] == job_id for w in workers)
    assert "unknown worker state `napping`" in server.cli("worker", "list", "--state", "napping").stderr
    events = server.cli("job", "events", "--id", job_id, check=True).stdout
    assert "JobCreated" in events and "JobLogsPersisted" in events

    disabled = json.loads(server.cli("provider", "disable", "local", "-o", "json", check=True).stdout)
    assert disabled[0]["status"] == "DISABLED"
    refused = server.cli("job", "run", "--provider", "local", "--command", "true", "--timeout", "30", "--wait")
    assert refused.returncode == 125
    assert "provider local is disabled" in refused.stderr
    server.cli("provider", "enable", "local", check=True)
    assert (
        server.cli("job", "run", "--provider", "local", "--command", "true", "--timeout", "30", "--wait").returncode
        == 0
    )
    assert query(database_url, "SELECT status FROM provider_configs WHERE provider_type = 'local'") == [("ACTIVE",)]
