"""A job cannot reach the platform, and its secrets never rest in plain text: on the
local provider and on Docker, with real workers and a real database."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from hodei.providers.base import WorkerLaunch
from hodei.providers.local import LocalProvider
from hodei.store.db import open_pool
from hodei.store.job_secrets import JobSecrets, SecretsPurged
from hodei.testing import ServerProcess, eventually, hodei_server, query, wait_running, wait_settled, wait_terminal

pytestmark = pytest.mark.e2e

SECRET = "s3cr3t-value-123"
# What a shell adds to the environment it was given.
SHELL_VARIABLES = {"PWD", "SHLVL", "_", "OLDPWD"}
BASE = {"PATH", "HOME", "TMPDIR", "LANG", "HODEI_JOB_ID", "HODEI_WORKER_ID", "HODEI_ATTEMPT", "HODEI_OUTPUT"}
PROBE = (
    "env; "
    "if cat /proc/$PPID/environ >/dev/null 2>&1; then echo AGENT-ENV-READABLE; else echo AGENT-ENV-HIDDEN; fi; "
    "if cat /proc/1/environ >/dev/null 2>&1; then echo PID1-ENV-READABLE; fi"
)
# HODEI_WORKER_MAX_PROCESSES of the servers here.
PROCESSES = 256


@pytest.fixture(scope="module")
def local(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_KILL_GRACE": "1", "HODEI_SECRET_RETENTION": "3600", "HODEI_WORKER_MAX_PROCESSES": str(PROCESSES)}
    with ServerProcess(database_url, tmp_path_factory.mktemp("local"), env) as server:
        yield server


@pytest.fixture(scope="module")
def docker(
    pg_server: str, template_database: str, worker_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    from conftest import new_database

    env = {
        "HODEI_DOCKER_ENABLED": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_WORKER_IMAGE": worker_image,
        "HODEI_KILL_GRACE": "1",
        "HODEI_WORKER_MAX_PROCESSES": str(PROCESSES),
    }
    with ServerProcess(new_database(pg_server, template_database), tmp_path_factory.mktemp("docker"), env) as server:
        yield server


PROVIDERS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


def run(server: ServerProcess, provider: str, command: str, *flags: str) -> str:
    result = server.cli("job", "run", "--provider", provider, "--command", command, "--timeout", "60", *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_job_sees_only_its_own_environment(request: pytest.FixtureRequest, provider: str) -> None:
    server: ServerProcess = request.getfixturevalue(provider)
    job_id = run(server, provider, PROBE, "--env", "MINE=1", "--wait")
    output = server.cli("job", "logs", "--id", job_id, check=True).stdout.splitlines()
    names = {line.split("=", 1)[0] for line in output if "=" in line and not line.startswith(" ")}
    assert names - SHELL_VARIABLES == BASE | {"MINE"}, names
    assert "DATABASE_URL" not in "\n".join(output)
    assert f"HODEI_JOB_ID={job_id}" in output
    assert "AGENT-ENV-HIDDEN" in output
    if provider == "docker":  # the agent is PID 1 there
        assert "PID1-ENV-READABLE" not in output


def test_a_local_job_cannot_read_the_logs_of_other_jobs(fresh_database_url: str) -> None:
    """Local jobs run on the server's host: with the default /tmp/hodei-logs made 0755,
    any of them read every job's output there, of any submitter on any provider. The
    server keeps its log directory to its own user, and says so when it takes rights away."""
    shared = Path(tempfile.mkdtemp(prefix="hodei-open-"))
    try:
        log_dir = shared / "logs"
        log_dir.mkdir()
        for directory in (shared, log_dir):
            directory.chmod(0o755)
        with ServerProcess(fresh_database_url, log_dir) as server:
            private = run(server, "local", "echo private-output", "--wait")
            probe = f"ls {log_dir} && echo LISTED; cat {log_dir}/{private}.log && echo READ; whoami"
            shown = server.cli("job", "logs", run(server, "local", probe, "--wait"), check=True)
            said = shown.stdout + shown.stderr
            assert "Permission denied" in said and "nobody" in said, said
            assert "LISTED" not in said and "READ" not in said and "private-output" not in said, said
            assert stat.S_IMODE(log_dir.stat().st_mode) == 0o700
            assert "was open to other users of this host (mode 0755): now 0700" in server.logs()
    finally:
        shutil.rmtree(shared)


def snooped(server: ServerProcess) -> tuple[str, list[str]]:
    """A job holding a secret, and another reading its environment, signalling its shell and
    listing its home while it runs: (the first's uid, what the second printed, its uid last)."""
    holder = run(server, "local", "id -u; echo $HOME; echo $$; sleep 30", "--secret", f"API_KEY={SECRET}")
    eventually(lambda: len(server.cli("job", "logs", "--id", holder).stdout.split()) == 3, 30, what="the holder")
    held_as, home, pid = server.cli("job", "logs", "--id", holder, check=True).stdout.split()
    snoop = (
        f"tr '\\0' '\\n' < /proc/{pid}/environ | grep -q API_KEY && echo FOUND; "
        f"kill -0 {pid} && echo SIGNALLED; ls {home} >/dev/null && echo ENTERED; id -u"
    )
    snooper = run(server, "local", snoop, "--wait")
    server.cli("job", "cancel", "--id", holder, check=True)
    for job_id in (holder, snooper):
        wait_settled(server.database_url, job_id)
    return held_as, server.cli("job", "logs", "--id", snooper).stdout.splitlines()


def test_local_jobs_under_one_user_reach_each_other_and_under_uids_of_their_own_do_not(
    local: ServerProcess, fresh_database_url: str, tmp_path: Path
) -> None:
    """Under HODEI_LOCAL_RUN_AS's default every local job is `nobody`: one reads another's
    secrets from /proc/PID/environ, signals its processes and lists its home. With a range
    of uids each running job has a uid of its own, and does none of it."""
    held_as, said = snooped(local)
    assert said == ["FOUND", "SIGNALLED", "ENTERED", "65534"] and held_as == "65534", said

    env = {"HODEI_LOCAL_RUN_AS": "61184-61215", "HODEI_KILL_GRACE": "1"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        held_as, said = snooped(server)
        assert (held_as, said[-1]) == ("61184", "61185"), said
        assert "FOUND" not in said and "SIGNALLED" not in said and "ENTERED" not in said, said
        again = run(server, "local", "id -u", "--wait")
        assert server.cli("job", "logs", "--id", again).stdout.split() == ["61184"]  # a uid is taken again
        health = server.cli("provider", "health", "local", check=True).stdout
        assert "jobs run as a uid of their own of 61184-61215" in health, health
        # A server started while a job runs (after a kill -9) finds that job's uid taken.
        wait_settled(fresh_database_url, again)  # its worker gone, its uid free
        running = run(server, "local", "id -u; sleep 30")
        eventually(lambda: server.cli("job", "logs", "--id", running).stdout.split() == ["61184"], 30)
        server.kill()
        server.start()
        after = run(server, "local", "id -u", "--wait")
        assert server.cli("job", "logs", "--id", after).stdout.split() == ["61185"]
        server.cli("job", "cancel", "--id", running, check=True)


def test_a_local_job_with_no_uid_of_the_range_left_fails_saying_so(fresh_database_url: str, tmp_path: Path) -> None:
    """The range holds HODEI_LOCAL_MAX_WORKERS uids (checked at start); the limit raised
    through the API past it, the job that finds none free fails, and never shares one."""
    env = {"HODEI_LOCAL_RUN_AS": "61184-61185", "HODEI_LOCAL_MAX_WORKERS": "2", "HODEI_KILL_GRACE": "1"}
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        server.cli("provider", "capacity", "local", "3", check=True)
        holders = [run(server, "local", "id -u; sleep 30") for _ in range(2)]

        def started() -> bool:
            return all(server.cli("job", "logs", "--id", job_id).stdout.strip() for job_id in holders)

        eventually(started, 30, what="both jobs to print their uids")
        third = run(server, "local", "id -u")
        assert wait_terminal(fresh_database_url, third, timeout=60) == "FAILED"
        (error,) = query(fresh_database_url, "SELECT error_message FROM jobs WHERE id = %s", (third,))[0]
        assert "every uid of HODEI_LOCAL_RUN_AS=61184-61185 is a running local job's" in error, error
        held = sorted(server.cli("job", "logs", "--id", job_id).stdout.strip() for job_id in holders)
        assert held == ["61184", "61185"]
        for job_id in holders:
            server.cli("job", "cancel", "--id", job_id, check=True)


@pytest.mark.parametrize(("run_as", "warned"), [("root", True), ("0:0", True), (None, True), ("nobody", False)])
def test_a_server_running_its_local_jobs_as_root_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, run_as: str | None, warned: bool
) -> None:
    """A job as root may read the server's keys and database password: an admin's choice
    (HODEI_LOCAL_RUN_AS=root or server), said at start, as listening without
    authentication is."""
    LocalProvider(f"root-{uuid4().hex[:8]}", ["true"], tmp_path, run_as=run_as).close()
    said = [r.getMessage() for r in caplog.records if "local jobs run as root" in r.getMessage()]
    assert bool(said) is warned, said


def test_a_restarted_provider_knows_the_uid_of_a_worker_that_has_not_become_it_yet(tmp_path: Path) -> None:
    """A worker's processes are root's until its agent starts the job as the uid chosen for
    it: a server restarted in that moment must not give that uid to another job. The worker
    here never becomes it (a command that ignores HODEI_JOB_USER), the widest such moment."""
    installation = f"uid-{uuid4().hex[:8]}"
    started = LocalProvider(installation, ["sleep", "60"], tmp_path, run_as=range(61184, 61186))
    restarted = LocalProvider(installation, ["sleep", "60"], tmp_path, run_as=range(61184, 61186))
    try:
        groups = started.cgroups
        assert groups is not None
        started.create_worker(WorkerLaunch("w1", "j1", {}))
        eventually(lambda: groups.pids("w1"), 10, what="the worker in its cgroup")
        restarted.create_worker(WorkerLaunch("w2", "j2", {}))
        eventually(lambda: groups.pids("w2"), 10, what="the worker in its cgroup")

        def user(worker_id: str) -> str:
            (pid,) = groups.pids(worker_id)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            return next(v.decode() for v in environ if v.startswith(b"HODEI_JOB_USER="))

        assert [user("w1"), user("w2")] == ["HODEI_JOB_USER=61184:61184", "HODEI_JOB_USER=61185:61185"]
    finally:
        restarted.destroy_worker("w2")
        started.destroy_worker("w1")
        started.close()
        restarted.close()
    assert not list((tmp_path / "workers").iterdir())  # nothing of either worker left


def test_two_providers_on_one_host_choosing_at_once_never_give_one_uid_twice(tmp_path: Path) -> None:
    """Two servers of one installation on one host (sharing HODEI_LOG_DIR, as servers sharing
    a database do) see each other's workers through their cgroups and records; each choice
    is made under a lock on the host, else both could pick the lowest uid free at once."""
    installation = f"uid-{uuid4().hex[:8]}"
    uids, rounds = range(61184, 61184 + 24), 12
    providers = [LocalProvider(installation, ["sleep", "60"], tmp_path, run_as=uids) for _ in range(2)]
    together = threading.Barrier(2)

    def create(index: int) -> None:
        for n in range(rounds):
            together.wait()
            providers[index].create_worker(WorkerLaunch(f"w{index}-{n}", f"j{index}-{n}", {}))

    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(create, range(2)))
        chosen = [(tmp_path / "workers" / f"w{i}-{n}.uid").read_text() for i in range(2) for n in range(rounds)]
        assert sorted(map(int, chosen)) == list(uids)
    finally:
        for index, provider in enumerate(providers):
            for n in range(rounds):
                provider.destroy_worker(f"w{index}-{n}")
            provider.close()
    assert not list((tmp_path / "workers").iterdir())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_jobs_temporary_files_are_its_own_and_go_with_it(request: pytest.FixtureRequest, provider: str) -> None:
    """TMPDIR is the job's private home: what mktemp or Python's tempfile make is out of other
    jobs' sight and does not pile up in the host's /tmp after the job (on the local provider
    /tmp is the host's, shared by every local job, all of them `nobody`)."""
    server: ServerProcess = request.getfixturevalue(provider)
    made = "f=$(mktemp); echo kept > $f; python3 -c 'import tempfile; print(tempfile.mkdtemp())'; echo $f"
    job_id = run(server, provider, made, "--wait")
    directory, file = server.cli("job", "logs", "--id", job_id, check=True).stdout.split()
    home = "/tmp/hodei-worker-"
    assert directory.startswith(home) and file.startswith(home), (directory, file)
    assert os.path.dirname(directory) == os.path.dirname(file)
    if provider == "local":
        eventually(lambda: not os.path.exists(os.path.dirname(file)), 15, what="the job's home to go")


def test_a_jobs_working_directory_is_made_only_where_its_user_could_make_it(local: ServerProcess) -> None:
    """A missing --working-dir was made by the agent, as root, and given to the job's user:
    `--working-dir /etc/systemd/system/ssh.service.d` was a directory of a root service's
    settings that the job then wrote in. It is made as the job's user would make it."""
    guarded = Path(tempfile.mkdtemp(prefix="hodei-root-only-"))  # root's, 0755 below
    shared = Path(tempfile.mkdtemp(prefix="hodei-shared-"))
    try:
        guarded.chmod(0o755)
        shared.chmod(0o1777)
        wanted = guarded / "service.d"
        refused = local.cli(
            "job", "run", "-p", "local", "-c", "echo x > override.conf", "--working-dir", str(wanted), "--wait"
        )
        job_id = refused.stdout.strip()
        assert refused.returncode == 126, refused.stderr  # its command could not be started
        (error,) = query(local.database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert f"cannot create working directory {wanted}: Permission denied for the job's user" in error, error
        assert not wanted.exists()
        made = shared / "a" / "b"
        ran = local.cli(
            "job", "run", "-p", "local", "-c", "touch x; stat -c %u .", "--working-dir", str(made), "--wait"
        )
        assert ran.returncode == 0, ran.stderr
        assert local.cli("job", "logs", ran.stdout.strip(), check=True).stdout == "65534\n"
        assert (made / "x").stat().st_uid == (shared / "a").stat().st_uid == 65534
    finally:
        shutil.rmtree(guarded)
        shutil.rmtree(shared)


# A second of busy work; prints the CPU seconds it got.
SPIN = (
    "python3 -c 'import os, time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\n"
    "t = os.times()\nprint(t.user + t.system)'"
)
ALLOCATE = "python3 -c 'data = b\"x\" * (512 * 1024 * 1024)'"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cpu_and_memory_limits_hold_and_the_oom_killer_is_named(request: pytest.FixtureRequest, provider: str) -> None:
    """The local provider ignored both (a 300 MB job under --memory 50Mi succeeded). A CPU
    quota bounds the CPU time a job gets from above (0.25 of 1.5 s, plus a period): more
    than half the wall time is only possible without one, whatever the machine's load."""
    server: ServerProcess = request.getfixturevalue(provider)
    spun = run(server, provider, SPIN, "--cpu", "0.25", "--wait")
    cpu_seconds = float(server.cli("job", "logs", spun, check=True).stdout)
    assert 0 < cpu_seconds < 0.75, cpu_seconds
    result = server.cli("job", "run", "-p", provider, "-c", ALLOCATE, "--memory", "128Mi", "--timeout", "60", "--wait")
    assert result.returncode == 137, result.stderr  # the job's own exit code: killed by SIGKILL
    job_id = result.stdout.strip()
    ((state, error),) = query(server.database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))
    assert (state, error) == (
        "FAILED",
        "exited with code 137: killed by the kernel's OOM killer, out of memory (OOMKilled)",
    )
    wait_settled(server.database_url, job_id)


# Writes 30 MB in the job's working directory, then waits to be stopped.
FILL = "head -c 30000000 /dev/zero > big; sleep 300"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_job_past_its_disk_limit_is_stopped_saying_why(request: pytest.FixtureRequest, provider: str) -> None:
    """A job could fill the host's disk (its home on the local provider, the container's
    layer on Docker): with --disk it is stopped once what it holds is past the limit, and
    its error says what held how much. One under its limit runs as any other."""
    server: ServerProcess = request.getfixturevalue(provider)
    job_id = run(server, provider, FILL, "--disk", "10Mi")
    assert wait_terminal(server.database_url, job_id, 60) == "FAILED"
    wait_settled(server.database_url, job_id)
    ((error,),) = query(server.database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))
    where = r"its home /tmp/hodei-worker-[0-9a-f-]+" if provider == "local" else r"container hodei-worker-[0-9a-f-]+"
    said = rf"^the worker was stopped \(SIGTERM\) before the job ended: {where} held (2\d|3\d)\.\d MiB, past the job's"
    assert re.match(said + r" disk limit of 10\.0 MiB \(--disk\)$", error), error
    small = run(server, provider, "head -c 1000000 /dev/zero > small", "--disk", "10Mi", "--wait")
    assert wait_terminal(server.database_url, small, 60) == "SUCCEEDED"
    assert "Resources: 10.0 MiB disk" in server.cli("job", "get", small, check=True).stdout.splitlines()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_server_killed_and_started_again_goes_on_measuring_a_jobs_disk(
    request: pytest.FixtureRequest, fresh_database_url: str, tmp_path: Path, provider: str
) -> None:
    """The limit is written down with the worker (a local one's record in the log directory,
    a container's label), so the server that takes the worker over after a kill -9 stops it
    past its limit as well."""
    env = {"HODEI_KILL_GRACE": "1"}
    if provider == "docker":
        image = request.getfixturevalue("worker_image")
        env |= {"HODEI_DOCKER_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0", "HODEI_WORKER_IMAGE": image}
    server = ServerProcess(fresh_database_url, tmp_path, env).start()
    try:
        job_id = run(server, provider, "sleep 8; head -c 30000000 /dev/zero > big; sleep 300", "--disk", "10Mi")
        eventually(
            lambda: query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 30
        )
        assert list((tmp_path / "workers").glob("*.disk")) or provider == "docker"
        server.kill()
        server.start()
        assert wait_terminal(fresh_database_url, job_id, 60) == "FAILED"
        wait_settled(fresh_database_url, job_id)
        ((error,),) = query(fresh_database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))
        assert "past the job's disk limit of 10.0 MiB (--disk)" in error, error
        assert not list((tmp_path / "workers").glob("*.disk"))  # gone with the worker
    finally:
        server.stop()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_finished_job_says_what_it_used(request: pytest.FixtureRequest, provider: str) -> None:
    """CPU seconds of its processes, and its worker's peak memory (its memory cgroup's:
    the agent's few MB and the page cache count too)."""
    server: ServerProcess = request.getfixturevalue(provider)
    job_id = run(
        server, provider, SPIN.replace("import os, time", 'import os, time\ndata = b"x" * (96 << 20)'), "--wait"
    )
    spent = float(server.cli("job", "logs", job_id, check=True).stdout)
    shown = json.loads(server.cli("-o", "json", "job", "get", job_id, check=True).stdout)
    (finished,) = [phase for phase in shown["phases"] if phase["name"] == "finished"]
    assert spent <= finished["cpu_seconds"] < spent + 1.0  # its own count, and its interpreter's start
    assert 96 * 2**20 <= finished["peak_memory_bytes"] < 1024 * 2**20
    assert re.search(
        r"^Used: \d+\.\d\d s CPU, \d+\.\d MiB peak memory \(attempt 1\)$",
        server.cli("job", "get", job_id, check=True).stdout,
        re.M,
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_running_job_says_what_it_uses_now_beside_what_it_asks_for(
    request: pytest.FixtureRequest, provider: str
) -> None:
    """`job top`: each heartbeat says the CPU cores the job's processes used since the one
    before and the memory they hold (its worker's cgroup): a job spinning under --cpu 0.5
    uses more than a sleeping one, and no more than its quota lets it."""
    server: ServerProcess = request.getfixturevalue(provider)
    busy = run(server, provider, "while :; do :; done", "--cpu", "0.5")
    idle = run(server, provider, "sleep 60", "--memory", "64Mi")
    for job_id in (busy, idle):
        wait_running(server.database_url, job_id)

    def said() -> dict[str, Any] | None:
        rows = json.loads(server.cli("-o", "json", "job", "top", busy, idle, check=True).stdout)
        found = {row["job_id"]: row for row in rows}
        return found if len(found) == 2 and all(row["cpu_cores"] is not None for row in rows) else None

    rows = eventually(said, 30, what="two heartbeats of each job, the second with a CPU figure")
    assert rows[idle]["cpu_cores"] < rows[busy]["cpu_cores"] < 1.0, rows
    assert (rows[busy]["asked_cpu_cores"], rows[idle]["asked_memory_bytes"]) == (0.5, 64 * 2**20)
    assert 0 < rows[idle]["memory_bytes"] < 64 * 2**20
    listed = server.cli("job", "top", check=True).stdout
    assert busy in listed and idle in listed, listed
    shown = server.cli("job", "get", busy, check=True).stdout
    assert re.search(r"^Using: \d+\.\d\d CPU, \d+\.\d (KiB|MiB) memory \(\d+ s ago\)$", shown, re.M), shown
    refused = server.cli("job", "top", "--state", "pending")
    assert refused.returncode == 2 and "job top shows running jobs" in refused.stderr
    for job_id in (busy, idle):
        server.cli("job", "cancel", job_id, "--force", check=True)
        wait_settled(server.database_url, job_id)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_flood_of_output_waits_for_the_server_and_does_not_cost_the_job_its_memory(
    request: pytest.FixtureRequest, provider: str
) -> None:
    """A job printing short lines faster than the server stores them: the agent read them
    all into memory (`yes` grew it by 70 MB a second), and under a memory limit the job
    was killed for it (3,000,000 lines peaked at 187-236 MiB). Now the job's writes wait
    in its pipe for the server's acknowledgements, and every line is stored in order."""
    server: ServerProcess = request.getfixturevalue(provider)
    lines = 3_000_000
    result = server.cli(
        "job", "run", "-p", provider, "-c", f"yes | head -n {lines}", "--memory", "80Mi", "--timeout", "300", "--wait"
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert server.cli("job", "logs", job_id, check=True, timeout=300).stdout == "y\n" * lines
    shown = json.loads(server.cli("-o", "json", "job", "get", job_id, check=True).stdout)
    (finished,) = [phase for phase in shown["phases"] if phase["name"] == "finished"]
    assert finished["peak_memory_bytes"] < 80 * 2**20


FORKS = """python3 -c '
import subprocess
started = []
try:
    while len(started) < 1000:
        started.append(subprocess.Popen(["sleep", "60"]))
    print("all 1000 started")
except OSError as exc:
    print("refused after", len(started), exc.strerror)
for child in started:
    child.kill()
    child.wait()
'"""


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_worker_has_at_most_its_share_of_processes(request: pytest.FixtureRequest, provider: str) -> None:
    """HODEI_WORKER_MAX_PROCESSES: a job forking without end fails its own forks past the
    limit (its agent's threads count too), not every process of the host's, whose limit
    (kernel.pid_max, 32,768 here) the server's threads share; the next job runs as ever."""
    server: ServerProcess = request.getfixturevalue(provider)
    job_id = run(server, provider, FORKS, "--wait")
    (said,) = server.cli("job", "logs", job_id, check=True).stdout.splitlines()
    started = re.fullmatch(r"refused after (\d+) Resource temporarily unavailable", said)
    assert started is not None, said
    assert PROCESSES // 2 < int(started[1]) < PROCESSES
    after = run(server, provider, "echo still here", "--wait")
    assert server.cli("job", "logs", after, check=True).stdout == "still here\n"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_hosts_oom_killer_takes_a_jobs_processes_first(request: pytest.FixtureRequest, provider: str) -> None:
    """Without a --memory limit a job can take the host's memory: the kernel's OOM killer
    then takes the worker's processes (oom_score_adj 1000, as a BestEffort pod's) before
    the server's or PostgreSQL's, which keep theirs."""
    server: ServerProcess = request.getfixturevalue(provider)
    job_id = run(server, provider, "cat /proc/self/oom_score_adj", "--wait")
    assert server.cli("job", "logs", job_id, check=True).stdout == "1000\n"
    assert server.process is not None
    assert Path(f"/proc/{server.process.pid}/oom_score_adj").read_text() == "0\n"


def test_a_local_memory_limit_below_the_agents_own_says_so(local: ServerProcess) -> None:
    """The agent counts in its worker's group (as in a container): 1 MiB kills it before it
    registers, and the job's error says it was the memory, not a silent -9."""
    result = local.cli("job", "run", "-p", "local", "-c", "true", "--memory", "1Mi", "--timeout", "60", "--wait")
    assert result.returncode == 125, result.stderr
    job_id = result.stdout.strip()
    ((error,),) = query(local.database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))
    assert "worker process exited with code -9 (killed: out of memory, under the job's --memory)" in error, error
    wait_settled(local.database_url, job_id)


def test_ended_local_workers_leave_no_cgroup_behind(local: ServerProcess) -> None:
    """A group whose last processes are still exiting refuses rmdir (EBUSY) for a moment
    after its cgroup.procs is empty: about one ended worker in three left its group to the
    reconciler (30 s later), or for ever when the server stopped first."""
    from hodei.providers.cgroups import WorkerCgroups, cgroup1_roots, cgroup2_root

    root = cgroup2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    jobs = [run(local, "local", "true", "--memory", "64Mi", "--cpu", "1") for _ in range(6)]
    for job_id in jobs:
        wait_settled(local.database_url, job_id)
    (installation,) = query(local.database_url, "SELECT value FROM hodei.secrets WHERE name = 'installation_id'")[0]
    groups = WorkerCgroups(root, installation, cgroup1_roots(), PROCESSES)
    assert set(groups.limit_bases) == {"memory", "cpu", "pids"}  # each job's limits were set
    workers = [
        row[0]
        for row in query(local.database_url, "SELECT id::text FROM workers WHERE job_id::text = ANY(%s)", (jobs,))
    ]
    assert len(workers) == len(jobs)
    bases = {groups.base, *groups.v1_bases.values()}
    assert [base / worker for base in bases for worker in workers if (base / worker).exists()] == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_secret_is_in_the_job_and_nowhere_else_and_purging_shreds_it(
    request: pytest.FixtureRequest, provider: str, tmp_path: Path
) -> None:
    server: ServerProcess = request.getfixturevalue(provider)
    url = server.database_url
    # The command must not hold the value itself: it checks the length the job received.
    command = f'echo "key=$API_KEY"; [ ${{#API_KEY}} -eq {len(SECRET)} ] && echo same; sleep 2'
    job_id = run(server, provider, command, "--secret", f"API_KEY={SECRET}")
    eventually(lambda: query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 60)
    if provider == "docker":
        import docker as docker_sdk

        client = docker_sdk.DockerClient(base_url="unix:///var/run/docker.sock")
        (container,) = client.containers.list(filters={"label": f"hodei.job-id={job_id}"})
        assert SECRET not in json.dumps(container.attrs)
        client.close()
    wait_settled(url, job_id)
    assert query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
    logs = server.cli("job", "logs", "--id", job_id, check=True).stdout.splitlines()
    assert logs == ["key=***", "same"]

    dump = subprocess.run([pg_dump(), url], capture_output=True, text=True, check=True).stdout
    assert job_id in dump and "sealed_secrets" in dump  # the dump holds the job, sealed
    assert SECRET not in dump
    assert SECRET not in server.logs()
    for path in server.log_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    shown = (
        server.cli("job", "get", "--id", job_id, check=True).stdout
        + server.cli("job", "events", "--id", job_id, "-o", "json", check=True).stdout
    )
    assert "API_KEY" in shown and SECRET not in shown and "aesgcm" not in shown

    purged = hodei_server(url, "secrets", "purge", "--job", job_id)
    assert "secrets purged" in purged.stdout, purged.stderr
    again = hodei_server(url, "secrets", "purge", "--job", job_id)
    assert again.returncode == 0 and f"job {job_id}: no secrets left" in again.stdout
    unknown = hodei_server(url, "secrets", "purge", "--job", str(uuid4()))
    assert unknown.returncode == 1 and "not found" in unknown.stderr, unknown.stdout
    pool = open_pool(url, max_size=1)
    try:
        with pytest.raises(SecretsPurged):
            JobSecrets(pool).open(job_id_uuid(job_id))
    finally:
        pool.close()
    verify = hodei_server(url, "replay", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_job_whose_secrets_were_purged_before_it_ran_fails_saying_so(fresh_database_url: str, tmp_path: Path) -> None:
    slow_agent = f"/bin/sh -c 'sleep 3; exec {sys.executable} -m hodei_worker.agent'"
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOCAL_WORKER_COMMAND": slow_agent}) as server:
        job_id = run(server, "local", "echo $TOKEN", "--secret", "TOKEN=abcd1234")
        pool = open_pool(fresh_database_url, max_size=1)
        try:
            assert JobSecrets(pool).purge(job_id_uuid(job_id))
        finally:
            pool.close()
        wait_settled(fresh_database_url, job_id)
    state, error = query(fresh_database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))[0]
    assert state == "FAILED"
    assert f"the secrets of job {job_id} were purged" in error


def job_id_uuid(text: str) -> Any:
    from uuid import UUID

    return UUID(text)


def pg_dump() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    assert found, "pg_dump is not installed"
    return str(found[-1])
