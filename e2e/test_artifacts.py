"""Artifacts end to end on the local provider: a job's files, kept once its command exits,
listed and saved through the CLI; what is refused, at the edge and past the limits."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hodei._proto import worker_pb2, worker_pb2_grpc
from hodei.artifacts import MAX_FILES
from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e

# A job that leaves files: a directory's, a glob's, one pattern matching nothing, a link
# out of its working directory, and one too large for the limit below; it fails.
SCRIPT = (
    "mkdir -p out/sub && printf a > out/a.txt && printf bb > out/sub/b.txt && echo r > report1.txt && "
    "ln -s /etc/hostname out/link && head -c 5000 /dev/zero > big.bin && exit 3"
)
LIMIT = 4096


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_MAX_ARTIFACT_BYTES": str(LIMIT), "HODEI_KILL_GRACE": "1"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process


def _run(server: ServerProcess, command: str, *artifacts: str) -> str:
    options = [item for pattern in artifacts for item in ("--artifact", pattern)]
    result = server.cli("job", "run", "--provider", "local", "--command", command, *options, "--wait")
    job_id = result.stdout.strip().splitlines()[0]
    assert f"Its artifacts: `hodei-jobs-cli job artifacts {job_id}`" in result.stderr  # where --wait ends
    wait_settled(server.database_url, job_id)
    return job_id


def test_a_job_leaves_its_files_whatever_its_exit_code(server: ServerProcess, tmp_path: Path) -> None:
    job_id = _run(server, SCRIPT, "out", "report*.txt", "missing.bin", "big.bin")
    assert query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("FAILED",)]
    listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json").stdout)
    by_name = {a["name"]: a for a in listed["artifacts"]}
    assert sorted(by_name) == ["out/a.txt", "out/sub/b.txt", "report1.txt"]
    assert by_name["out/sub/b.txt"]["size_bytes"] == 2
    assert by_name["report1.txt"]["sha256"] == hashlib.sha256(b"r\n").hexdigest()
    assert {a["attempt"] for a in listed["artifacts"]} == {1}

    log = server.cli("job", "logs", job_id).stdout + server.cli("job", "logs", job_id).stderr
    assert "[hodei] no file matches artifact pattern `missing.bin`" in log
    assert "[hodei] artifact out/link skipped: a symbolic link, or a path through one" in log
    assert f"[hodei] artifact big.bin not stored: artifact big.bin is 5000 bytes; {LIMIT - 5} of the attempt's" in log
    assert "[hodei] stored 3 artifacts, 5 bytes" in log

    saved = server.cli("job", "artifacts", job_id, "--save", str(tmp_path))
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "out/sub/b.txt").read_bytes() == b"bb"
    assert (tmp_path / "report1.txt").read_bytes() == b"r\n"
    assert not list(tmp_path.rglob("*.part"))
    one = server.cli("job", "artifacts", job_id, "out/a.txt", "--save", "-")
    assert one.stdout == "a"

    assert (
        f"Artifacts: 3 files, 5 bytes (attempt 1; `job artifacts {job_id}`)" in server.cli("job", "get", job_id).stdout
    )
    phases = json.loads(server.cli("job", "get", job_id, "-o", "json").stdout)["phases"]
    stored = [p for p in phases if p["name"] == "artifacts_stored"]
    assert [(p["attempt"], p["detail"]) for p in stored] == [(1, "3 files, 5 bytes")]


def test_what_an_exclusion_matches_is_not_kept(server: ServerProcess) -> None:
    """GitLab's artifacts:exclude: a directory kept without its scratch files."""
    command = "mkdir -p out/cache && echo r > out/report.txt && echo t > out/x.tmp && echo c > out/cache/c.bin"
    result = server.cli(
        *("job", "run", "-p", "local", "-c", command, "--artifact", "out"),
        *("--artifact-exclude", "**/*.tmp", "--artifact-exclude", "out/cache", "--wait"),
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    wait_settled(server.database_url, job_id)
    listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json", check=True).stdout)["artifacts"]
    assert [a["name"] for a in listed] == ["out/report.txt"]
    assert "[hodei] 2 files left out (--artifact-exclude)" in server.cli("job", "logs", job_id, check=True).stderr


def test_links_back_up_the_tree_end_no_job_and_past_the_files_limit_one_line_says_so(server: ServerProcess) -> None:
    """Links a wildcard meets are not looked through: `glob`'s `**` went round `loop` and
    `out/up` for ever (the job never ended, its agent's memory growing by the gigabyte).
    A name that is not UTF-8 is skipped. Past the attempt's files the agent sends none
    more, and says so once (it sent each, each refused, a line of the log each)."""
    command = (
        "mkdir out && for i in $(seq 1 1010); do : > out/f$i.txt; done && "
        "ln -s / out/root && ln -s .. out/up && ln -s . loop && touch \"out/$(printf '\\377').txt\""
    )
    result = server.cli("job", "run", "-p", "local", "-c", command, "--artifact", "**/*.txt", "--artifact", "out")
    job_id = result.stdout.strip()
    assert server.cli("job", "watch", job_id).returncode == 0
    wait_settled(server.database_url, job_id)
    listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json", check=True).stdout)["artifacts"]
    names = sorted(f"out/f{index}.txt" for index in range(1, 1011))
    assert sorted(a["name"] for a in listed) == names[:MAX_FILES]
    said = [line for line in server.cli("job", "logs", job_id, check=True).stderr.splitlines() if "artifact" in line]
    assert said == [
        "[hodei] artifact out/\\xff.txt skipped: its name is not UTF-8",  # its note broke the log: no end
        f"[hodei] artifact {names[MAX_FILES]} and 9 more not stored: the attempt stored {MAX_FILES} files, the limit",
        f"[hodei] stored {MAX_FILES} artifacts, 0 bytes",
    ]


def test_a_timed_out_job_keeps_what_it_left_and_a_cancelled_one_nothing(server: ServerProcess) -> None:
    timed_out = server.cli(
        *("job", "run", "-p", "local", "--timeout", "1", "--artifact", "progress.txt", "--wait"),
        *("--command", "echo step 1 > progress.txt; sleep 30"),
    )
    assert timed_out.returncode == 124, timed_out.stderr
    job_id = timed_out.stdout.strip()
    wait_settled(server.database_url, job_id)
    assert server.cli("job", "artifacts", job_id, "progress.txt", "--save", "-").stdout == "step 1\n"

    cancelled = server.cli(
        *("job", "run", "-p", "local", "--artifact", "progress.txt"),
        *("--command", "echo step 1 > progress.txt; echo written; sleep 30"),
    ).stdout.strip()
    eventually(lambda: "written" in server.cli("job", "logs", cancelled).stdout, 30, 0.2, what="the file")
    server.cli("job", "cancel", cancelled, check=True)
    wait_settled(server.database_url, cancelled)
    assert json.loads(server.cli("job", "artifacts", cancelled, "-o", "json").stdout)["artifacts"] == []


def test_each_attempt_keeps_its_own_files_and_the_latest_is_read(server: ServerProcess, tmp_path: Path) -> None:
    command = 'echo "$HODEI_WORKER_ID" > who.txt; exit 1'
    result = server.cli(
        "job", "run", "--provider", "local", "--command", command, "--artifact", "who.txt", "--retry", "1", "--wait"
    )
    job_id = result.stdout.strip()
    wait_settled(server.database_url, job_id)
    listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json").stdout)["artifacts"]
    assert [(a["name"], a["attempt"]) for a in listed] == [("who.txt", 1), ("who.txt", 2)]
    first = server.cli("job", "artifacts", job_id, "who.txt", "--attempt", "1", "--save", "-").stdout
    latest = server.cli("job", "artifacts", job_id, "who.txt", "--save", "-").stdout
    assert first != latest
    workers = query(server.database_url, "SELECT id::text FROM workers WHERE job_id = %s ORDER BY attempt", (job_id,))
    assert [first.strip(), latest.strip()] == [row[0] for row in workers]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--artifact", "/etc/passwd"], "artifact `/etc/passwd` must be relative to the working directory"),
        (["--artifact", "out/../../x"], "must stay inside the working directory (no `..`)"),
        (["--artifact", ""], "artifact paths must not be empty"),
        (["--artifact-exclude", "*.tmp"], "excluding artifacts is for a job that keeps some (--artifact)"),
        (["--artifact", "out", "--artifact-exclude", "/tmp"], "artifact exclusion `/tmp` must be relative"),
    ],
)
def test_bad_patterns_are_refused_before_anything_is_written(server: ServerProcess, args: list[str], said: str) -> None:
    before = query(server.database_url, "SELECT count(*) FROM domain_events")
    result = server.cli("job", "run", "--provider", "local", "--command", "true", *args)
    assert result.returncode == 2
    assert said in result.stderr
    assert query(server.database_url, "SELECT count(*) FROM domain_events") == before


def test_what_a_caller_may_not_read_or_name(server: ServerProcess) -> None:
    job_id = _run(server, "echo x > x.txt", "x.txt")
    unknown = server.cli("job", "artifacts", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 2 and "not found" in unknown.stderr
    missing = server.cli("job", "artifacts", job_id, "y.txt", "--save", "-")
    assert missing.returncode == 2 and f"job {job_id} has no artifact y.txt" in missing.stderr
    two = server.cli("job", "artifacts", job_id, "--save", "-")
    for names in (["x.txt"], []):  # with or without a name: the job had one attempt
        beyond = server.cli("job", "artifacts", job_id, *names, "--attempt", "2")
        assert beyond.returncode == 2
        assert f"job {job_id} has had 1 attempt(s); there is no attempt 2" in beyond.stderr
    assert two.returncode == 0  # one artifact: the only one named by default
    assert two.stdout == "x\n"


def test_only_a_worker_in_session_stores_artifacts(server: ServerProcess) -> None:
    """An upload needs a worker's session, as its stream does: a made-up one is refused."""
    channel = server.channel()
    try:
        stub = worker_pb2_grpc.WorkerAgentServiceStub(channel)
        pieces = iter([worker_pb2.ArtifactUpload(header=worker_pb2.ArtifactHeader(job_id="j", name="a", size_bytes=1))])
        metadata = (("x-hodei-worker-id", "00000000-0000-0000-0000-000000000001"), ("x-hodei-session", "forged"))
        with pytest.raises(grpc.RpcError) as refused:
            stub.UploadArtifact(pieces, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()


def test_a_reduce_fetches_the_artifacts_of_the_jobs_it_starts_after(server: ServerProcess) -> None:
    """A map's array leaves one file each; the job after it finds them all under
    artifacts/<job id>/, its own to read and remove (they belong to the job's user)."""
    mapped = server.cli(
        *("job", "run", "-p", "local", "--array", "0-2", "--artifact", "out", "--wait"),
        *("--command", "mkdir -p out && echo $((HODEI_ARRAY_INDEX * 10 + 1)) > out/part.txt"),
    )
    assert mapped.returncode == 0, mapped.stderr
    map_ids = mapped.stdout.split()
    reduce = "awk '{s += $1} END {print s}' artifacts/*/out/part.txt > sum.txt && ls artifacts && rm -r artifacts"
    reduced = server.cli(
        *("job", "run", "-p", "local", "--after-array", map_ids[0], "--fetch-artifacts", "--wait"),
        *("--command", reduce, "--artifact", "sum.txt", "--artifact", "artifacts"),
    )
    assert reduced.returncode == 0, reduced.stderr
    job_id = reduced.stdout.strip()
    wait_settled(server.database_url, job_id)
    assert server.cli("job", "artifacts", job_id, "sum.txt", "--save", "-").stdout == "33\n"
    log = server.cli("job", "logs", job_id)
    assert sorted(log.stdout.split()) == sorted(map_ids)
    assert "[hodei] fetched 3 artifacts of 3 jobs into artifacts/, 8 bytes" in log.stderr
    assert "[hodei] no file matches artifact pattern `artifacts`" in log.stderr  # removed: it was the job's


def test_fetched_artifacts_follow_no_link_the_jobs_user_could_not(server: ServerProcess) -> None:
    """A working directory others may write in (a shared one, 1777) can hold a link planted
    there, `artifacts` -> a directory of root's: the agent, root, wrote the fetched files
    through it. It writes them as the job's user: the fetch fails, nothing is written."""
    first = _run(server, "echo payload > x.txt", "x.txt")
    guarded = Path(tempfile.mkdtemp(prefix="hodei-root-only-"))  # root's, 0755
    shared = Path(tempfile.mkdtemp(prefix="hodei-shared-"))
    try:
        guarded.chmod(0o755)
        shared.chmod(0o1777)
        (shared / "artifacts").symlink_to(guarded)
        result = server.cli(
            *("job", "run", "-p", "local", "--after", first, "--fetch-artifacts", "--working-dir", str(shared)),
            *("--command", "echo ran", "--wait"),
        )
        assert result.returncode == 126, result.stderr
        ((error,),) = query(
            server.database_url, "SELECT error_message FROM jobs WHERE id = %s", (result.stdout.strip(),)
        )
        assert f"cannot fetch artifact x.txt of job {first}: " in error and "for the job's user (uid 65534)" in error
        assert list(guarded.iterdir()) == []
    finally:
        shutil.rmtree(guarded)
        shutil.rmtree(shared)


def test_a_job_gets_no_file_its_user_could_not_reach(server: ServerProcess) -> None:
    """Its working directory made a link into a directory of root's (0700) before it
    exits: a file there that anyone may read, but its user could never reach, was
    uploaded by the agent (root), which checked the file and not the way to it. Its home,
    a link by then, goes without what it led to."""
    guarded = Path(tempfile.mkdtemp(prefix="hodei-root-only-"))  # root's, 0700
    try:
        (guarded / "secret.txt").write_text("root's\n")
        (guarded / "secret.txt").chmod(0o644)
        swap = f'home=$PWD; cd /; rm -rf "$home" && ln -s {guarded} "$home"'
        ran = server.cli("job", "run", "-p", "local", "-c", swap, "--artifact", "secret.txt", "--wait")
        assert ran.returncode == 0, ran.stderr
        job_id = ran.stdout.strip()
        wait_settled(server.database_url, job_id)
        log = server.cli("job", "logs", job_id)
        assert "[hodei] artifact secret.txt skipped: the job's user may not read it" in log.stderr, log.stderr
        assert "[hodei] stored 0 artifacts, 0 bytes" in log.stderr
        assert (guarded / "secret.txt").read_text() == "root's\n"
        ((worker_id,),) = query(server.database_url, "SELECT id::text FROM workers WHERE job_id = %s", (job_id,))
        assert not os.path.lexists(f"/tmp/hodei-worker-{worker_id}")
    finally:
        shutil.rmtree(guarded)


def test_a_job_whose_inputs_are_gone_fails_to_start_saying_which(server: ServerProcess) -> None:
    first = _run(server, "echo x > x.txt", "x.txt")
    shutil.rmtree(server.log_dir / "artifacts" / first)
    result = server.cli(
        "job", "run", "-p", "local", "--after", first, "--fetch-artifacts", "--command", "echo ran", "--wait"
    )
    assert result.returncode == 126, result.stderr  # as any job that could not start
    job_id = result.stdout.strip()
    wait_settled(server.database_url, job_id)
    ((state, error),) = query(server.database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))
    assert state == "FAILED"
    assert (
        f"cannot fetch artifact x.txt of job {first}: artifact x.txt of job {first} (attempt 1) is no longer stored"
        in error
    )
    assert "ran" not in server.cli("job", "logs", job_id).stdout


def test_fetching_needs_jobs_to_start_after(server: ServerProcess) -> None:
    result = server.cli("job", "run", "-p", "local", "--command", "true", "--fetch-artifacts")
    assert result.returncode == 2
    assert "fetching artifacts needs jobs to start after (--after, --after-array)" in result.stderr
