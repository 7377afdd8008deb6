"""The worker agent's parts: running a job in its own process group, batching output."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import grpc
import pytest
from hodei_worker.agent import Agent, Echo, Settings, image_settings, make_home
from hodei_worker.artifacts import PIECE_BYTES, upload
from hodei_worker.batcher import MAX_SENDS, Batch, LogBatcher
from hodei_worker.masking import MASK, Masker
from hodei_worker.runner import (
    DEFAULT_PATH,
    CpuCounter,
    JobProcess,
    MemoryGroup,
    Outcome,
    UsageSampler,
    argv_for,
    exit_text,
    job_environment,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from hodei._proto import worker_pb2
from hodei.providers.agent_template import agent_python, alive


def run(command: str, args: tuple[str, ...] = (), timeout: float = 20.0, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    lines: list[tuple[str, str]] = []
    process = JobProcess(
        argv_for(command, list(args)),
        env or dict(os.environ),
        None,
        timeout=timeout,
        kill_grace=0.5,
        on_output=lambda stream, texts, _partial: lines.extend((stream, text) for text in texts),
    )
    return process, process.run(), lines


def test_a_command_alone_is_a_shell_line_and_with_args_a_program() -> None:
    assert argv_for("echo a && echo b", []) == ["/bin/sh", "-c", "echo a && echo b"]
    assert argv_for("bash", ["-c", "echo x"]) == ["bash", "-c", "echo x"]
    _, finished, lines = run("bash", ("-c", "echo Processing file test.txt && echo Done"))
    assert finished.outcome is Outcome.EXITED and finished.exit_code == 0
    assert lines == [("stdout", "Processing file test.txt"), ("stdout", "Done")]


def test_the_job_sees_its_own_variables_over_a_minimal_base() -> None:
    env = job_environment("j", "w", 2, "/tmp/home", {"MY_VAR": "1", "HODEI_JOB_ID": "forged"}, {"API_KEY": "k3y!"})
    assert env == {
        "PATH": DEFAULT_PATH,
        "HOME": "/tmp/home",
        "TMPDIR": "/tmp/home",
        "LANG": "C.UTF-8",
        "MY_VAR": "1",
        "API_KEY": "k3y!",
        "HODEI_JOB_ID": "j",
        "HODEI_WORKER_ID": "w",
        "HODEI_OUTPUT": "/tmp/home/.hodei-output",
        "HODEI_ATTEMPT": "2",
    }
    # A server that does not say which attempt it is: none, rather than a wrong one.
    assert "HODEI_ATTEMPT" not in job_environment("j", "w", 0, "/tmp/home", {}, {})


def test_in_its_own_image_the_job_gets_the_images_variables_and_workdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the provider set for the agent is named in HODEI_AGENT_VARIABLES and kept from the
    job, as are Kubernetes' service variables; `/`, the directory of an image without a
    WORKDIR, gives the job a scratch directory instead."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HODEI_WORKER_TOKEN", "t")
    monkeypatch.setenv("PYTHONHOME", "/opt/hodei-agent/agent/home")
    monkeypatch.setenv("HODEI_AGENT_VARIABLES", "HODEI_AGENT_VARIABLES,HODEI_WORKER_TOKEN,PYTHONHOME")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("JAVA_HOME", "/opt/java")
    monkeypatch.chdir(tmp_path)
    assert image_settings() == {"image_env": {"JAVA_HOME": "/opt/java"}, "image_workdir": str(tmp_path)}
    monkeypatch.chdir("/")
    assert image_settings()["image_workdir"] == ""
    monkeypatch.delenv("HODEI_AGENT_VARIABLES")
    assert image_settings() == {}  # the worker image: none of this


def test_secret_values_are_masked_in_every_line() -> None:
    mask = Masker(["s3cr3t-value-123", "-----BEGIN KEY-----\nabcdefgh\nxy\n-----END KEY-----"])
    assert mask("token=s3cr3t-value-123;again s3cr3t-value-123") == "token=***;again ***"
    assert mask("abcdefgh") == "***"
    assert mask("xy is too short to mask") == "xy is too short to mask"
    assert Masker([])("unchanged") == "unchanged"


@pytest.mark.parametrize(("command", "code"), [("exit 3", 3), ("kill -9 $$", 137), ("true", 0)])
def test_exit_codes_follow_the_shell_convention(command: str, code: int) -> None:
    _, finished, _ = run(command)
    assert (finished.outcome, finished.exit_code) == (Outcome.EXITED, code)


def test_a_missing_program_fails_to_start() -> None:
    _, finished, _ = run("/nonexistent/program", ("x",))
    assert finished.outcome is Outcome.START_FAILED
    assert finished.exit_code == 127
    assert "/nonexistent/program" in finished.message


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    _, finished, _ = run(f"sleep 300 & echo $! >> {pids}; trap '' TERM; sleep 300 & echo $! >> {pids}; wait", timeout=1)
    assert finished.outcome is Outcome.TIMED_OUT
    assert finished.message == "timed out after 1s"
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    assert not any(alive(pid) for pid in children)


def test_cancel_stops_the_job() -> None:
    lines: list[tuple[str, str]] = []
    process = JobProcess(
        ["/bin/sh", "-c", "echo started; sleep 300"],
        dict(os.environ),
        None,
        60,
        0.5,
        lambda stream, texts, _partial: lines.extend((stream, text) for text in texts),
    )
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(process.run()))
    thread.start()
    while not lines:
        threading.Event().wait(0.01)
    process.cancel("by test")
    thread.join(10)
    (finished,) = result
    assert finished.outcome is Outcome.CANCELLED  # type: ignore[attr-defined]
    assert finished.message == "cancelled: by test"  # type: ignore[attr-defined]


def cancelled(
    timeout: float, grace: float | None, kill_grace: float = 0.5, cleanup: float = 1
) -> tuple[object, list[str]]:
    """Runs a job whose SIGTERM trap takes ``cleanup`` seconds and cancels it once it
    started, with ``grace``: (finished, its stdout)."""
    trap = f"trap 'echo stopping; sleep {cleanup}; echo cleaned up; exit 3' TERM"
    script = f"{trap}; echo started; while :; do sleep 0.1; done"
    lines: list[str] = []
    process = JobProcess(
        ["/bin/bash", "-c", script],
        dict(os.environ),
        None,
        timeout,
        kill_grace,
        lambda stream, texts, _partial: lines.extend(texts) if stream == "stdout" else None,
    )
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(process.run()))
    thread.start()
    while not lines:
        threading.Event().wait(0.01)
    process.cancel("by test", grace)
    thread.join(30)
    return result[0], lines


def test_a_cancel_gives_the_job_its_own_grace_and_force_gives_none() -> None:
    finished, lines = cancelled(60, grace=5)  # the kill_grace (0.5 s) would cut the cleanup
    assert lines == ["started", "stopping", "cleaned up"]
    assert (finished.outcome, finished.exit_code) == (Outcome.CANCELLED, 3)  # type: ignore[attr-defined]
    finished, lines = cancelled(60, grace=0)
    assert lines == ["started"]  # no SIGTERM: its trap never ran
    assert finished.exit_code == 137  # type: ignore[attr-defined]
    finished, lines = cancelled(60, grace=None)  # no grace asked: the kill_grace
    assert lines == ["started", "stopping"] and finished.exit_code == 137  # type: ignore[attr-defined]


def test_a_cancels_grace_ends_with_the_jobs_timeout_and_kill_grace() -> None:
    """The server waits for a result until the job's timeout and kill_grace: a longer
    grace asked late would outlive that wait."""
    finished, lines = cancelled(timeout=1.5, grace=60, kill_grace=0.3, cleanup=20)
    # SIGKILLed within its cleanup: the grace asked would have let it say "cleaned up".
    assert lines == ["started", "stopping"] and finished.exit_code == 137  # type: ignore[attr-defined]


def test_many_short_jobs_all_end_as_exited() -> None:
    """Regression: Popen.poll() from two threads could answer None and leave a finished
    job waiting for its timeout."""
    outcomes = {run("echo hi")[1].outcome for _ in range(150)}
    assert outcomes == {Outcome.EXITED}


# In as_agent's scripts: whether the agent has any child left, reaped or not.
_CHILDREN = """
def children():
    try:
        os.waitpid(-1, os.WNOHANG)
        return "children left"
    except ChildProcessError:
        return "no children"
"""


def as_agent(body: str, tmp_path: Path) -> list[str]:
    """Runs ``body`` in a Python of its own that is a subreaper, as an agent is (the
    test's own process is not one, and has children of its own): its output's lines."""
    script = "import os, sys\nsys.path.insert(0, 'workers')\n"
    script += "from hodei_worker.runner import JobProcess, argv_for, become_subreaper, reap_all\n"
    script += "from hodei.providers.agent_template import alive\n"
    script += f"become_subreaper()\nSCRATCH = {str(tmp_path)!r}\n" + _CHILDREN + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_orphans_of_the_job_are_reaped(tmp_path: Path) -> None:
    lines = as_agent(
        """
        command = argv_for("setsid sh -c 'sleep 0.2' & exit 0", [])
        job = JobProcess(command, dict(os.environ), None, 10, 0.5, lambda *_: None)
        print(job.run().outcome.value)
        import time; time.sleep(0.5)
        reap_all()
        print(children())
        """,
        tmp_path,
    )
    assert lines == ["exited", "no children"]


def test_what_the_command_left_running_ends_with_it_in_any_session(tmp_path: Path) -> None:
    """A daemon (here ``setsid``, and a child of it) escapes the group's SIGKILL and held
    the job's output open: the job ended only when the agent gave up waiting for it (10 s),
    and the daemon outlived the job."""
    lines = as_agent(
        """
        stray, its_child = f"{SCRATCH}/stray", f"{SCRATCH}/child"
        started = f"setsid sh -c 'sleep 300 & echo $! > {its_child}; exec sleep 300' & echo $! > {stray}"
        wait = f"while [ ! -s {its_child} ]; do sleep 0.01; done; echo main done"
        output = []
        keep = lambda _stream, texts, _partial: output.extend(texts)
        job = JobProcess(argv_for(f"{started}; {wait}", []), dict(os.environ), None, 60, 0.5, keep)
        finished = job.run()
        print(finished.outcome.value, finished.exit_code, output)
        for name in (stray, its_child):
            print("alive" if alive(int(open(name).read())) else "gone")
        print(children())
        """,
        tmp_path,
    )
    assert lines == ["exited 0 ['main done']", "gone", "gone", "no children"]


def test_only_an_agent_ends_the_processes_a_job_left() -> None:
    """Elsewhere (this test's process) a child may be anyone's: it is left alone."""
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        _, finished, _ = run("echo hi")
        assert finished.outcome is Outcome.EXITED
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_output_is_batched_by_size_and_by_time_and_kept_until_acknowledged() -> None:
    sent: list[Batch] = []
    batcher = LogBatcher(sent.append, max_lines=3, max_delay=0.05)
    for n in range(7):
        batcher.add("stdout", [f"line {n}"])
    assert [b.line_count for b in sent] == [3, 3]
    assert batcher.wait_all_acked(0.01) is False  # flushes the last line, nothing acknowledged
    assert [b.seq for b in sent] == [1, 2, 3]
    assert [b.seq for b in batcher.pending()] == [1, 2, 3]
    for batch in sent:
        batcher.acked(batch.seq)
    assert batcher.wait_all_acked(0.01) is True
    batcher.add("stderr", ["late"])
    threading.Event().wait(0.3)
    assert sent[-1].runs[0][1:] == ("stderr", ["late"], False)
    batcher.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the job's user needs root")
def test_jobs_forked_while_grpc_is_busy_start_cleanly() -> None:
    """Regression: forking a job as another user (fork, not vfork) while gRPC threads were
    busy ran gRPC's fork handlers in the child: now and then it died (SIGSEGV, SIGABRT)
    before exec, or hung. The agent turns those handlers off."""
    script = textwrap.dedent(
        """
        import collections, sys, threading
        sys.path.insert(0, "workers")
        import hodei_worker.agent  # sets GRPC_ENABLE_FORK_SUPPORT before grpc loads
        import grpc
        from concurrent import futures
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from hodei_worker.runner import JobProcess, JobUser
        server = grpc.server(futures.ThreadPoolExecutor(4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        busy = threading.Event()
        def chatter():
            while not busy.is_set():
                stub.Check(health_pb2.HealthCheckRequest())
        threads = [threading.Thread(target=chatter) for _ in range(3)]
        for thread in threads:
            thread.start()
        codes = collections.Counter()
        for _ in range(200):
            job = JobProcess(["sh", "-c", "echo x"], {"PATH": "/usr/bin:/bin"}, "/tmp", 20, 0.5,
                             lambda *_: None, user=JobUser.parse("nobody"))
            codes[job.run().exit_code] += 1
        busy.set()
        for thread in threads:
            thread.join()
        server.stop(0).wait()
        print(dict(codes), flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent
    )
    assert result.stdout.strip() == "{0: 200}", result.stderr[-2000:]


def test_a_long_line_is_handed_on_in_pieces_and_a_last_line_without_newline_whole() -> None:
    from hodei_worker.runner import PIECE_BYTES

    pieces: list[tuple[str, int, bool]] = []
    process = JobProcess(
        ["/bin/sh", "-c", f"printf '%{PIECE_BYTES * 2 + 10}s' '' | tr ' ' x; echo; printf 'é%.0s' 1 2 3; printf end"],
        {"PATH": "/usr/bin:/bin"},
        None,
        20,
        0.5,
        lambda _stream, texts, partial: pieces.extend((text[:3], len(text), partial) for text in texts),
    )
    assert process.run().exit_code == 0
    assert pieces == [("xxx", PIECE_BYTES, True), ("xxx", PIECE_BYTES, True), ("xxx", 10, False), ("ééé", 6, False)]


def test_batches_are_bounded_in_bytes_and_a_batch_never_acknowledged_is_given_up() -> None:
    sent: list[Batch] = []
    batcher = LogBatcher(sent.append, max_lines=1000, max_delay=10, max_bytes=1000)
    for _ in range(5):
        batcher.add("stdout", ["y" * 400])
    assert [b.line_count for b in sent] == [2, 2]
    for _ in range(100):
        assert len(batcher.pending()) == 2  # streams that never reached a server do not count
    for _ in range(MAX_SENDS + 1):
        batcher.unanswered()
    assert batcher.pending() == []
    assert batcher.lost_lines == 4
    batcher.close()


def test_output_is_handed_on_a_read_at_a_time_in_order_and_without_carriage_returns() -> None:
    calls: list[list[str]] = []
    process = JobProcess(
        ["/bin/sh", "-c", "seq 1 100000; printf 'dos\\r\\nline\\r\\n'"],
        {"PATH": "/usr/bin:/bin"},
        None,
        20,
        0.5,
        lambda _stream, texts, _partial: calls.append(texts),
    )
    assert process.run().exit_code == 0
    assert [text for texts in calls for text in texts] == [str(n) for n in range(1, 100001)] + ["dos", "line"]
    assert len(calls) < 1000  # whole reads, not a call per line


def test_a_character_cut_by_a_piece_boundary_is_decoded_whole() -> None:
    from hodei_worker.runner import PIECE_BYTES

    pieces: list[tuple[str, bool]] = []
    process = JobProcess(
        ["/bin/sh", "-c", f"printf '%{PIECE_BYTES - 1}s' '' | tr ' ' x; printf 'éz\\n'"],
        {"PATH": "/usr/bin:/bin"},
        None,
        20,
        0.5,
        lambda _stream, texts, partial: pieces.extend((text[-2:], partial) for text in texts),
    )
    assert process.run().exit_code == 0
    assert pieces == [("xx", True), ("éz", False)]  # é's first byte ended the piece


def test_output_waits_while_too_much_of_it_is_unacknowledged() -> None:
    """A flood the server cannot take as fast waits in the job's pipe, not in the agent's
    memory: past ``max_unacked_bytes`` the reader waits for acknowledgements (a batch
    given up counts as answered); the agent's own notes from the thread that reads the
    acknowledgements never wait."""
    sent: list[Batch] = []
    batcher = LogBatcher(sent.append, max_lines=1000, max_delay=10, max_bytes=1000, max_unacked_bytes=2000)
    for _ in range(5):
        batcher.add("stdout", ["y" * 484])  # 500 bytes a line with its overhead: two a batch
    assert [b.line_count for b in sent] == [2, 2]  # 2,000 bytes unacknowledged, one line waiting
    with ThreadPoolExecutor(1) as reader:
        added = reader.submit(batcher.add, "stdout", ["z"])
        time.sleep(0.3)
        assert not added.done()  # waits for room
        batcher.add("stderr", ["[hodei] SIGUSR1 sent to the command (job signal)"], wait=False)
        batcher.acked(sent[0].seq)
        added.result(timeout=10)
        batcher.flush()
        batcher.add("stdout", ["x" * 484])
        batcher.flush()  # 2,083 bytes unacknowledged again
        blocked = reader.submit(batcher.add, "stdout", ["v"])
        time.sleep(0.3)
        assert not blocked.done()
        for _ in range(MAX_SENDS + 1):
            batcher.unanswered()  # given up: no longer waited for
        blocked.result(timeout=10)
    batcher.flush()
    texts = [text for b in sent for run in b.runs for text in run[2]]
    assert texts == ["y" * 484] * 5 + ["[hodei] SIGUSR1 sent to the command (job signal)", "z", "x" * 484, "v"]
    batcher.close()


def test_the_agents_own_copy_of_the_output_stops_at_its_limit_saying_where_the_rest_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    echo = Echo("job-1", most=2**20 // 4)
    echo.left = 10  # of the quarter MiB
    echo.write("stdout", ["12345"], False)
    echo.write("stderr", ["678"], True)
    echo.write("stdout", ["9ab"], False)  # passes the limit: written, then the note
    echo.write("stdout", ["never"], False)
    out, err = capsys.readouterr()
    assert out == "12345\n9ab\n"
    assert err.startswith("678[hodei-worker] the job's output is copied here up to 0.25 MiB and no further")
    assert err.endswith("(`hodei-jobs-cli job logs job-1`)\n")


def test_lines_read_together_are_split_across_batches_in_order() -> None:
    sent: list[Batch] = []
    batcher = LogBatcher(sent.append, max_lines=1000, max_delay=10, max_bytes=20_000)
    texts = [f"{n:05}" for n in range(2500)]
    batcher.add("stdout", texts)
    batcher.add("stdout", ["y" * 30_000])  # bigger than any batch: goes alone
    batcher.flush()
    assert [b.line_count for b in sent] == [952, 952, 596, 1]  # 21 bytes a line with overhead
    assert [text for b in sent for run in b.runs for text in run[2]] == [*texts, "y" * 30_000]
    batcher.close()


def test_the_agent_takes_the_pace_its_server_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Importing the agent sets GRPC_ENABLE_FORK_SUPPORT, for its own process: undone after.
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "false")
    from hodei_worker.agent import Agent, Settings

    from hodei._proto import worker_pb2

    agent = Agent(Settings(servers=("127.0.0.1:9",), worker_id="w", job_id="j", token="t", kill_grace=1.0))
    try:
        for milliseconds, expected in ((7000, 7.0), (0, 7.0), (50, 0.2)):
            ack = worker_pb2.HeartbeatAck(heartbeat_interval_ms=milliseconds)
            agent._on_message(worker_pb2.ServerMessage(heartbeat_ack=ack))
            assert agent.heartbeat_interval == expected
    finally:
        agent.close()


def test_the_end_of_a_jobs_command_is_reported_whatever_breaks_after_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Storing the artifacts or flushing the log raising (a file name no log line could
    carry did) killed the job thread: no result, and the job stayed RUNNING, its worker
    beating, until its timeout and margins ran out."""
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "false")
    from hodei_worker.runner import Finished, Outcome

    agent = Agent(Settings(servers=("127.0.0.1:9",), worker_id="w", job_id="j", token="t", kill_grace=1.0))
    try:

        class Ran:
            def run(self) -> Finished:
                return Finished(Outcome.EXITED, 3, "exited with code 3")

        def broken() -> list[worker_pb2.StoredArtifact]:
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

        agent.process = Ran()  # type: ignore[assignment]
        agent.artifacts, agent.home = ("out",), str(tmp_path / "home")
        monkeypatch.setattr(agent, "_store_artifacts", broken)
        agent._run_job()
        message = agent.outbox.get(timeout=5)
        assert message is not None and message.WhichOneof("kind") == "result"
        assert (message.result.job_id, message.result.exit_code) == ("j", 3)
        assert message.result.outcome == worker_pb2.JOB_OUTCOME_EXITED
    finally:
        agent.close()


def test_the_local_provider_starts_the_agent_without_site_and_it_finds_all_it_imports() -> None:
    python, env = agent_python()
    probe = "import sys, grpc, hodei_worker.template; print(sys.flags.no_site)"
    done = subprocess.run([*python, "-c", probe], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_a_jobs_home_is_named_after_its_worker_or_made_beside_a_name_taken(tmp_path: Path) -> None:
    """Named so that the local provider removes it with the worker (an agent killed first
    cannot); a name someone else took first (here a link to /etc) is not used."""
    home = Path(make_home(str(tmp_path), "w1"))
    assert home == tmp_path / "hodei-worker-w1"
    assert home.is_dir() and stat.S_IMODE(home.stat().st_mode) == 0o700
    (tmp_path / "hodei-worker-w2").symlink_to("/etc")
    beside = Path(make_home(str(tmp_path), "w2"))
    assert beside.parent == tmp_path and beside.name.startswith("hodei-worker-w2-")
    assert beside.is_dir() and not beside.is_symlink() and stat.S_IMODE(beside.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("returncode", "out_of_memory", "said"),
    [
        (0, False, "exited with code 0"),
        (3, False, "exited with code 3"),
        (-9, True, "exited with code 137: killed by the kernel's OOM killer, out of memory (OOMKilled)"),
        (137, True, "exited with code 137: killed by the kernel's OOM killer, out of memory (OOMKilled)"),
        (-9, False, "exited with code 137: killed by SIGKILL"),
        (137, False, "exited with code 137"),  # a shell's 128 + 9: its child's signal, or its own exit 137
        (-40, False, "exited with code 168: killed by signal 40"),
        (127, False, "exited with code 127 (the shell's code for a command not found)"),
    ],
)
def test_how_a_command_ended_is_said_with_what_its_code_tells(returncode: int, out_of_memory: bool, said: str) -> None:
    assert exit_text(returncode, out_of_memory) == said


def test_a_secret_cut_between_two_pieces_of_a_long_line_is_masked_all_the_same() -> None:
    """A line longer than a piece leaves the worker in pieces; a secret across the cut
    matched in neither and went out whole, in two halves."""
    from hodei_worker.runner import PIECE_BYTES

    secret = "s3cr3t-value-0123456789"
    mask = Masker([secret, "short", "-----BEGIN-----\nline-two-of-it"])
    pieces: list[tuple[str, bool]] = []

    def on_output(stream: str, texts: list[str], partial: bool) -> None:
        masked, goes_on = mask.output(stream, texts, partial)
        pieces.extend((text, index == len(masked) - 1 and goes_on) for index, text in enumerate(masked))

    before = PIECE_BYTES - 10  # the cut falls in the secret's eleventh character
    script = f"printf '%{before}s' '' | tr ' ' x; printf '{secret}yy\\nline-two-of-it\\n'"
    finished = JobProcess(["/bin/sh", "-c", script], dict(os.environ), None, 20.0, 0.5, on_output).run()
    assert finished.exit_code == 0
    lines, line = [], ""
    for text, goes_on in pieces:
        line += text
        if not goes_on:
            lines.append(line)
            line = ""
    assert lines == ["x" * before + "***yy", "***"]
    assert len(pieces) == 3 and pieces[0][1]  # still in pieces: the line is never held whole
    assert Masker([secret]).output("stdout", ["a", "b"], False) == (["a", "b"], False)


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(st.text("abc", min_size=4, max_size=12), min_size=1, max_size=3),
    line=st.text("abc-", max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_no_secret_survives_however_a_line_is_cut_in_pieces(secrets: list[str], line: str, cuts: list[int]) -> None:
    mask = Masker(secrets)
    bounds = sorted({0, len(line), *(cut for cut in cuts if cut < len(line))})
    shown = ""
    for start, end in pairwise(bounds):
        masked, _ = mask.output("stdout", [line[start:end]], end < len(line))
        shown += "".join(masked)
    if len(bounds) < 2:  # an empty line: one call
        shown = "".join(mask.output("stdout", [line], False)[0])
    assert not any(secret in part for part in shown.split(MASK) for secret in secrets), (line, shown)
    assert shown == mask(line)  # in pieces as whole


def test_the_usage_a_heartbeat_says_is_read_from_the_workers_cgroups(tmp_path: Path) -> None:
    """`job top`: CPU cores on average since the last sample (cgroup v2's cpu.stat
    usage_usec, or v1's cpuacct.usage in nanoseconds), memory held now (memory.current, or
    v1's memory.usage_in_bytes); no CPU figure on the first sample; nothing without groups."""
    group = tmp_path / "hodei-worker-w1"
    group.mkdir()
    (group / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 900000\n")
    (group / "memory.current").write_text(f"{5 * 2**20}\n")
    clock = iter([10.0, 12.0, 13.0])
    sampler = UsageSampler("w1", clock=lambda: next(clock))
    sampler.memory, sampler.cpu = MemoryGroup(str(group), v2=True), CpuCounter(str(group / "cpu.stat"), v2=True)
    assert sampler.sample() == (None, 5 * 2**20)
    (group / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert sampler.sample() == (0.75, 5 * 2**20)  # 1.5 s of CPU in 2 s
    (group / "memory.current").write_text("not a number\n")
    assert sampler.sample() == (0.0, None)
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.usage_in_bytes").write_text("4096\n")
    (v1 / "cpuacct.usage").write_text("3000000000\n")
    clock = iter([1.0, 3.0])
    sampler = UsageSampler("w1", clock=lambda: next(clock))
    sampler.memory, sampler.cpu = MemoryGroup(str(v1), v2=False), CpuCounter(str(v1 / "cpuacct.usage"), v2=False)
    assert sampler.sample() == (None, 4096)
    (v1 / "cpuacct.usage").write_text("4000000000\n")
    assert sampler.sample() == (0.5, 4096)
    assert UsageSampler("no-such-worker").sample() == (None, None)


class _Keeper:
    """A server's end of artifact uploads: the first one it receives makes the agent move on
    to its next server (as the agent's stream does when its server is lost), which closes
    the channel the upload came over; or it refuses each with ``refusal``."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.calls = 0
        self.refusal: grpc.StatusCode | None = None

    def upload(
        self, request_iterator: Iterator[worker_pb2.ArtifactUpload], context: grpc.ServicerContext
    ) -> worker_pb2.StoredArtifact:
        self.calls += 1
        header = next(request_iterator).header
        if self.refusal is not None:
            context.abort(self.refusal, "refused")
        if self.calls == 1:
            self.agent._next_server()
        size = 0
        with contextlib.suppress(grpc.RpcError):  # the cut call's pieces stop coming
            for piece in request_iterator:
                size += len(piece.data)
        return worker_pb2.StoredArtifact(name=header.name, size_bytes=size)


def test_an_upload_cut_by_the_agent_moving_to_another_server_is_sent_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Regression: a server killed mid-upload can be noticed first by the agent's stream,
    which moves to the next address and closes the channel it leaves; the upload on that
    channel ended CANCELLED ("Channel closed!"), or, begun just after, raised ValueError,
    and the agent gave the file up: the job ended SUCCEEDED without its artifact. It is sent
    again over the channel the agent moved to; a server's refusal is not."""
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "false")
    server = grpc.server(ThreadPoolExecutor(4))
    port = server.add_insecure_port("127.0.0.1:0")
    agent = Agent(Settings(servers=(f"127.0.0.1:{port}",), worker_id="w", job_id="j", token="t", kill_grace=1.0))
    keeper = _Keeper(agent)
    handler = grpc.stream_unary_rpc_method_handler(
        keeper.upload, worker_pb2.ArtifactUpload.FromString, worker_pb2.StoredArtifact.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("hodei.jobs.WorkerAgentService", {"UploadArtifact": handler}),)
    )
    server.start()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(8 * PIECE_BYTES))
    try:
        stored = upload(lambda: agent.stub, (), "j", "big.bin", str(big), time.monotonic() + 30)
        assert (stored.name, stored.size_bytes, keeper.calls) == ("big.bin", 8 * PIECE_BYTES, 2)

        stale = agent.stub  # taken just before the stream moved on: refused by its closed channel
        agent._next_server()
        stubs = iter([stale])
        stored = upload(lambda: next(stubs, agent.stub), (), "j", "big.bin", str(big), time.monotonic() + 30)
        assert (stored.size_bytes, keeper.calls) == (8 * PIECE_BYTES, 3)

        keeper.refusal = grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as refused:
            upload(lambda: agent.stub, (), "j", "big.bin", str(big), time.monotonic() + 30)
        assert (refused.value.code(), keeper.calls) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 4)
    finally:
        agent.close()
        server.stop(0).wait()
