"""Commands run beside a running job's own (`job exec`): the rule of what one may be, the
Job's record of them, and the worker's running of them (real processes)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import pytest
from hodei_worker.masking import Masker
from hodei_worker.runner import JobProcess, argv_for

from hodei.domain.execs import DEFAULT_TIMEOUT, MOST_ARGV_BYTES, MOST_EXECS, MOST_TIMEOUT, check_exec
from hodei.domain.job import Job, JobState
from hodei.domain.spec import JobSpec
from hodei.errors import InvalidInput, InvalidTransition, LimitReached

WORKER = "w-1"
NONE = Masker(())


@pytest.mark.parametrize(
    ("argv", "timeout", "said"),
    [
        ([], 0, "give the command to run"),
        ([" "], 0, "give the command to run"),
        (["echo", "a\0b"], 0, "NUL"),
        (["x"] * 1001, 0, "at most 1000 arguments"),
        (["echo", "x" * MOST_ARGV_BYTES], 0, "bytes long"),
        (["true"], -1, "1 to 3600 seconds, got -1"),
        (["true"], MOST_TIMEOUT + 1, "1 to 3600 seconds"),
    ],
)
def test_a_command_that_cannot_be_run_is_refused_saying_why(argv: list[str], timeout: int, said: str) -> None:
    with pytest.raises(InvalidInput, match=said):
        check_exec(argv, timeout)


def test_a_command_keeps_its_words_and_takes_the_default_timeout() -> None:
    assert check_exec(["sh", "-c", "echo 'a b'"], 0) == (["sh", "-c", "echo 'a b'"], DEFAULT_TIMEOUT)
    assert check_exec(["true"], MOST_TIMEOUT) == (["true"], MOST_TIMEOUT)


def running_job() -> Job:
    job = Job.submit(JobSpec(name="t", command="sleep 60", timeout_seconds=60), uuid4())
    job.assign(WORKER, "p", "local")
    job.accept(WORKER)
    return job


def test_each_command_is_requested_with_its_attempt_and_ends_once() -> None:
    job = running_job()
    assert job.exec(["ps"], 60) == 0
    assert job.exec(["id"], 5) == 1
    requested = [e for e in job.collect_events() if type(e).__name__ == "JobExecRequested"]
    assert [(e.index, e.attempt, e.argv, e.timeout_seconds) for e in requested] == [  # type: ignore[attr-defined]
        (0, 1, ["ps"], 60),
        (1, 1, ["id"], 5),
    ]
    assert job.exec_ended(1, 3, "exited with code 3", 10, 0)
    assert not job.exec_ended(1, 0, "sent again", 10, 0)  # the worker's repeat changes nothing
    assert not job.exec_ended(7, 0, "no such", 0, 0)
    assert job.execs == [False, True]
    assert (job.exec_ended_already(0), job.exec_ended_already(1), job.exec_ended_already(7)) == (False, True, True)
    assert job.exec_ended(0, 0, "exited with code 0", 0, 0)


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.ASSIGNED, JobState.SUCCEEDED, JobState.CANCELLED])
def test_only_a_running_job_takes_a_command(state: JobState) -> None:
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    if state is not JobState.PENDING:
        job.assign(WORKER, "p", "local")
    if state is JobState.SUCCEEDED:
        job.accept(WORKER)
        job.finish(WORKER, JobState.SUCCEEDED, 0, None)
    if state is JobState.CANCELLED:
        job.cancel("test")
    with pytest.raises(InvalidTransition, match=f"is {state}: a command runs only beside a running job's"):
        job.exec(["ps"], 60)
    assert job.execs == []


def test_a_job_takes_at_most_so_many_commands() -> None:
    job = running_job()
    for _ in range(MOST_EXECS):
        job.exec(["true"], 1)
    with pytest.raises(LimitReached, match=f"{MOST_EXECS} commands"):
        job.exec(["true"], 1)


class Running:
    """A job's command running on a thread, as the agent runs it."""

    def __init__(self, command: str = "sleep 30", env: dict[str, str] | None = None) -> None:
        self.process = JobProcess(
            argv_for(command, []),
            env or dict(os.environ),
            None,
            timeout=60,
            kill_grace=0.2,
            on_output=lambda *_: None,
        )
        self.thread = threading.Thread(target=self.process.run, daemon=True)

    def __enter__(self) -> JobProcess:
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.process._process is None:  # started
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return self.process

    def __exit__(self, *_: object) -> None:
        self.process.cancel("test over", grace=0)
        self.thread.join(10)


def test_a_command_beside_runs_in_the_jobs_environment_and_says_how_it_ended() -> None:
    with Running(env={**os.environ, "SEEN": "yes"}) as job:
        ran = job.beside(["sh", "-c", "echo $SEEN; echo oops >&2; exit 3"], 10, 1024, NONE)
        assert (ran.exit_code, ran.message) == (3, "exited with code 3")
        assert (ran.stdout, ran.stderr, ran.stdout_bytes, ran.stderr_bytes) == (b"yes\n", b"oops\n", 4, 5)
        missing = job.beside(["no-such-program"], 10, 1024, NONE)
        assert (missing.exit_code, missing.message) == (127, "cannot start no-such-program: No such file or directory")


def test_a_command_beside_past_its_timeout_is_killed_with_what_it_left() -> None:
    with Running() as job:
        started = time.monotonic()
        ran = job.beside(["sh", "-c", "sleep 30 & echo waiting; wait"], 0.5, 1024, NONE)
        assert (ran.exit_code, ran.message, ran.stdout) == (124, "timed out after 0.5s", b"waiting\n")
        assert time.monotonic() - started < 10  # its child, holding the pipe, went too


def test_what_a_command_beside_prints_is_kept_up_to_a_size_masked_at_the_cut() -> None:
    secret = "s3cret-value-xyz"
    mask = Masker([secret])
    with Running() as job:
        # The secret straddles the cut at 100 bytes: it is masked, not shown in part.
        ran = job.beside(["sh", "-c", f"printf '%095d{secret}'; head -c 300000 /dev/zero"], 10, 100, mask)
        assert ran.exit_code == 0
        assert ran.stdout == b"0" * 95 + b"***" + b"\0" * 2
        assert ran.stdout_bytes == 95 + len(secret) + 300000


def test_the_orphan_reaper_leaves_commands_beside_their_exit_codes() -> None:
    """The agent reaps the job's orphans while it runs; a command beside, just ended, is
    not one of them: its own exit code is reported, however many end at once."""
    with Running("sh -c 'for i in 1 2 3 4 5 6 7 8; do (sleep 0.1 &) ; sleep 0.05; done; sleep 30'") as job:
        with ThreadPoolExecutor(8) as pool:
            ended = pool.map(lambda n: job.beside(["sh", "-c", f"exit {n}"], 10, 10, NONE), range(1, 41))
            codes = [ran.exit_code for ran in ended]
        assert codes == list(range(1, 41))


def test_a_command_beside_ends_with_the_job() -> None:
    with Running("sleep 1") as job:
        ran = job.beside(["sleep", "30"], 20, 10, NONE)
        assert (ran.exit_code, ran.message) == (137, "killed: the job's command ended")
        after = job.beside(["true"], 20, 10, NONE)
        assert (after.exit_code, after.message) == (126, "not started: the job's command is not running")
