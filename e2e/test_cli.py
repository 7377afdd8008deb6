"""The CLI as people use it: ids by prefix or @latest and never cut, --wait across a server restart,
Ctrl-C while waiting, JSON lines while waiting."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
import pytest

from hodei._proto import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    common_pb2,
    cron_pb2,
    cron_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from hodei.cli.main import main
from hodei.errors import ShuttingDown
from hodei.testing import (
    BIN,
    Cli,
    Link,
    ServerProcess,
    eventually,
    every_race_lost,
    query,
    wait_running,
    wait_settled,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A small HODEI_MAX_INPUT_BYTES: an --input past it is refused at upload.
    env = {"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "30", "HODEI_MAX_INPUT_BYTES": "1000000"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process
    print(process.logs()[-5000:])


def test_at_latest_is_the_newest_job(server: ServerProcess) -> None:
    """First in this module: its database has no job yet."""
    none = server.cli("job", "get", "@latest")
    assert (none.returncode, none.stdout) == (2, "")
    assert none.stderr == "hodei-jobs-cli: error: @latest: there are no jobs yet\n"
    older = server.cli("job", "run", "--provider", "local", "--command", "echo older", "--wait", check=True)
    newer = server.cli("job", "run", "--provider", "local", "--command", "echo newer", "--wait", check=True)
    assert older.stdout != newer.stdout
    assert server.cli("job", "logs", "@latest", check=True).stdout == "newer\n"
    shown = server.cli("job", "describe", "--id", "@latest", check=True).stdout
    assert shown.startswith(f"Job {newer.stdout.strip()}\n")
    sagas = server.cli("-o", "json", "saga", "list", "--job", "@latest", check=True).stdout
    assert {saga["correlation_id"] for saga in json.loads(sagas)["sagas"]} == {newer.stdout.strip()}


def test_a_multi_line_command_without_a_name_runs_and_is_named_on_one_line(server: ServerProcess) -> None:
    """A heredoc or a pasted script is a common command; the name it gets holds no newline."""
    ran = server.cli("job", "run", "-p", "local", "-c", "echo one\n\techo two", "--follow", check=True)
    assert ran.stdout == "one\ntwo\n"
    shown = json.loads(server.cli("-o", "json", "job", "get", "@latest", check=True).stdout)
    assert (shown["spec"]["name"], shown["spec"]["command"]) == ("echo one echo two", "echo one\n\techo two")


def test_env_values_keep_their_commas_unless_a_new_variable_follows(server: ServerProcess, tmp_path: Path) -> None:
    """`--env "K=V,K2=V2"` is the seed's form; a value with `,NAME=` in it (a query string)
    writes that comma `\\,`, or it starts a variable. An --env-file's values are taken as
    written, and --env wins over it."""
    env_file = tmp_path / "job.env"
    env_file.write_text("# settings\n\nQUERY=?a=1,b=2\nQUOTED='kept'\nNEXT=from the file\n")
    env = ("-e", "LIST=a,b,c", "-e", r"URL=http://x/?a=1\,b=2,NEXT=3", "-e", "SPLIT=?a=1,b=2")
    command = 'echo "$LIST|$URL|$NEXT|$SPLIT|$b|$QUERY|$QUOTED"'
    ran = server.cli(
        "job", "run", "-p", "local", "--env-file", str(env_file), *env, "-c", command, "--follow", check=True
    )
    assert ran.stdout == "a,b,c|http://x/?a=1,b=2|3|?a=1|2|?a=1,b=2|'kept'\n"
    env_file.write_text("GOOD=1\nnot a variable\n")
    refused = server.cli("job", "run", "-p", "local", "--env-file", str(env_file), "-c", "true")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.endswith(
        f"--env-file {env_file}, line 2: expected KEY=VALUE with KEY made of ASCII letters, digits and _, "
        "not beginning with a digit\n"
    )
    env_file.write_text("export GOOD=1\n")  # a shell script's line
    refused = server.cli("job", "run", "-p", "local", "--env-file", str(env_file), "-c", "true")
    assert refused.returncode == 2
    assert refused.stderr.endswith("(`export` is a shell's word: an env file has KEY=VALUE lines)\n"), refused.stderr


def test_several_jobs_are_cancelled_in_one_command_and_one_refused_stops_none(server: ServerProcess) -> None:
    """`scancel 1 2 3`, `docker stop a b`: each in turn; an ended or unknown one is said and
    the rest are cancelled all the same, exit 2. With -o json, one job a line."""
    sleepers = [server.cli("job", "run", "-p", "local", "-c", "sleep 120", check=True).stdout.strip() for _ in range(4)]
    ended = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True).stdout.strip()
    unknown = "00000000-0000-0000-0000-000000000000"
    first, second, third, fourth = sleepers
    shown = server.cli("job", "cancel", first, ended, second[:8], unknown, "--grace", "1s")
    assert (shown.returncode, shown.stdout) == (2, "")
    assert shown.stderr.splitlines() == [
        f"Job {first} CANCELLED (Status Code: 6)",
        f"hodei-jobs-cli: error: job {ended} already ended SUCCEEDED (FAILED_PRECONDITION)",
        f"Job {second} CANCELLED (Status Code: 6)",
        f"hodei-jobs-cli: error: job {unknown} not found (NOT_FOUND)",
    ]
    both = server.cli("-o", "json", "job", "cancel", third, fourth, check=True)
    assert [(job["id"], job["state"]) for job in map(json.loads, both.stdout.splitlines())] == [
        (third, "CANCELLED"),
        (fourth, "CANCELLED"),
    ]
    for job_id in sleepers:
        wait_settled(server.database_url, job_id)


def test_logs_since_a_moment_begin_with_the_first_line_printed_then(server: ServerProcess) -> None:
    """`kubectl logs --since`, `docker logs --since`: a time, or a duration back from now."""
    job_id = server.cli(
        "job", "run", "-p", "local", "-c", "echo early; sleep 1.5; echo late", "--wait", check=True
    ).stdout.strip()
    late_at = server.cli("job", "logs", job_id, "-t", check=True).stdout.splitlines()[1].split()[0]
    assert server.cli("job", "logs", job_id, "--since", late_at, check=True).stdout == "late\n"
    assert server.cli("job", "logs", job_id, "--since", "1h", check=True).stdout == "early\nlate\n"
    both = server.cli("job", "logs", job_id, "--since", "1h", "--tail", "1", check=True)  # the later of the two
    assert both.stdout == "late\n"
    future = server.cli("job", "logs", job_id, "--since", "2099-01-01T00:00:00Z")
    assert future.returncode == 2 and "since 2099-01-01T00:00:00Z is in the future (INVALID_ARGUMENT)" in future.stderr
    words = server.cli("job", "logs", job_id, "--since", "yesterday")
    assert words.returncode == 2 and "argument --since: takes a duration such as 10m" in words.stderr


def test_job_list_since_a_moment_lists_the_jobs_submitted_then_or_later(server: ServerProcess) -> None:
    older = server.cli("job", "run", "-p", "local", "-c", "true", check=True).stdout.strip()
    newer = server.cli("job", "run", "-p", "local", "-c", "true", check=True).stdout.strip()
    created = json.loads(server.cli("-o", "json", "job", "get", newer, check=True).stdout)["created_at"]
    listed = json.loads(
        server.cli("-o", "json", "job", "list", "--since", created, "--limit", "1000", check=True).stdout
    )
    assert [job["id"] for job in listed["jobs"]] == [newer] and listed["total_count"] == 1
    recent = json.loads(server.cli("-o", "json", "job", "list", "--since", "1h", "--limit", "1000", check=True).stdout)
    assert {older, newer} <= {job["id"] for job in recent["jobs"]}
    for job_id in (older, newer):
        wait_settled(server.database_url, job_id)


def test_job_list_selects_by_labels_as_kubectl_does(server: ServerProcess) -> None:
    """`-l KEY=VALUE`, `KEY!=VALUE` (or no such label), `KEY`, `!KEY`; every term holds.
    The console's job list takes the same terms. A malformed one is refused before the call."""
    run = ("job", "run", "-p", "local", "-c", "true", "--label", "suite=selectors")
    blue = server.cli(*run, "--label", "team=blue", "--label", "tier=web", check=True).stdout.strip()
    red = server.cli(*run, "--label", "team=red", check=True).stdout.strip()
    bare = server.cli(*run, check=True).stdout.strip()

    def listed(*terms: str) -> set[str]:
        flags = [flag for term in ("suite=selectors", *terms) for flag in ("-l", term)]
        shown = json.loads(server.cli("-o", "json", "job", "list", *flags, "--limit", "1000", check=True).stdout)
        assert shown["total_count"] == len(shown["jobs"])
        return {job["id"] for job in shown["jobs"]}

    assert listed("team=blue") == {blue}
    assert listed("team!=blue") == {red, bare}
    assert listed("team") == {blue, red}
    assert listed("!team") == {bare}
    assert listed("team", "!tier") == {red}
    assert listed("team!=red", "!tier") == {bare}
    # Every != term of a key holds, not only its last (the last alone listed blue here).
    assert listed("team!=blue", "team!=red") == {bare}
    for wrong in ("=blue", "!", "!team=blue", "te!am"):
        refused = server.cli("job", "list", "-l", wrong)
        assert refused.returncode == 2 and f"label selector `{wrong}`: expected KEY=VALUE" in refused.stderr
    both = server.cli("job", "list", "-l", "team=blue", "-l", "team=red")
    assert both.returncode == 2 and "team cannot also be 'blue'; no job would match" in both.stderr
    for job_id in (blue, red, bare):
        wait_settled(server.database_url, job_id)


def test_an_array_submits_a_job_per_index_and_waits_for_the_highest_exit_code(server: ServerProcess) -> None:
    """Slurm's `sbatch --array --wait`, Kubernetes' indexed Jobs: one job per index, each
    told its index; listed by the array's label; --wait exits with the highest code."""
    command = 'echo "$HODEI_ARRAY_INDEX/$HODEI_ARRAY_COUNT $HODEI_ARRAY_ID"; exit $HODEI_ARRAY_INDEX'
    ran = server.cli("job", "run", "-p", "local", "-n", "sweep", "-c", command, "--array", "0,2-4:2", "--wait")
    assert ran.returncode == 4, ran.stderr
    job_ids = ran.stdout.split()
    first = job_ids[0]
    assert len(job_ids) == 3 and f"Array {first}: 3 jobs (`job list -l hodei.io/array={first}`)" in ran.stderr
    listed = json.loads(server.cli("-o", "json", "job", "list", "-l", f"hodei.io/array={first}", check=True).stdout)
    jobs = {job["id"]: job for job in listed["jobs"]}
    assert set(jobs) == set(job_ids)
    for job_id, index in zip(job_ids, (0, 2, 4), strict=True):
        assert (jobs[job_id]["spec"]["name"], jobs[job_id]["exit_code"]) == (f"sweep[{index}]", index)
        assert server.cli("job", "logs", job_id, check=True).stdout == f"{index}/3 {first}\n"
    # Each in turn, as `job run --array --wait`; @latest (the array's last job) anywhere.
    watched = server.cli("job", "watch", job_ids[0], job_ids[1], "@latest")
    assert watched.returncode == 4
    assert [line.split()[:2] for line in watched.stdout.splitlines()] == [
        [job_ids[0], "SUCCEEDED"],
        [job_ids[1], "FAILED"],
        [job_ids[2], "FAILED"],
    ]
    # All or nothing: one job the server refuses (a name too long once suffixed) submits none.
    before = query(server.database_url, "SELECT count(*) FROM jobs")
    with server.channel() as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        spec = common_pb2.JobSpec(name="n" * 253, command="true", timeout_seconds=30, provider="local")
        with pytest.raises(grpc.RpcError) as refused:
            stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec, array=[1, 10]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name must be at most 255 characters" in str(refused.value.details())
    assert query(server.database_url, "SELECT count(*) FROM jobs") == before
    for job_id in job_ids:
        wait_settled(server.database_url, job_id)


def assert_at_most_two_at_once(url: str, job_ids: list[str]) -> None:
    """Every job ran, and at each one's start at most one other was running."""
    spans = query(
        url, "SELECT started_at, completed_at FROM jobs WHERE id = ANY(%s::uuid[]) ORDER BY started_at", (job_ids,)
    )
    assert len(spans) == len(job_ids) and all(started and ended for started, ended in spans)
    for started, _ in spans:
        assert sum(1 for s, e in spans if s <= started < e) <= 2


def out_of_line(server: ServerProcess, job_ids: list[str], what: str) -> list[dict[str, Any]]:
    """The queue's entries of those jobs waiting out of line, once there are some."""

    def found() -> list[dict[str, Any]] | None:
        queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
        return [job for job in queued if job["job_id"] in job_ids and job["position"] == 0] or None

    return eventually(found, what=what)


def test_an_array_with_a_limit_runs_at_most_that_many_of_its_jobs_at_once(server: ServerProcess) -> None:
    """Slurm's `--array 0-5%2`: the queue says why the rest wait; never more than two run
    together, and each next one starts as one ends. A limit without an array is refused."""
    url = server.database_url
    job_ids = server.cli("job", "run", "-p", "local", "-c", "sleep 1", "--array", "0-5%2", check=True).stdout.split()
    waiting = out_of_line(server, job_ids, "the array's jobs past its limit wait, saying why")
    assert waiting[0]["reason"].startswith("its array runs at most 2 jobs at once (--array …%2): ")
    for job_id in job_ids:
        wait_settled(url, job_id, 60)
    assert_at_most_two_at_once(url, job_ids)
    with server.channel() as channel:
        spec = common_pb2.JobSpec(name="n", command="true", timeout_seconds=30, provider="local", array_limit=2)
        with pytest.raises(grpc.RpcError) as refused:
            jobs_pb2_grpc.JobExecutionServiceStub(channel).QueueJob(jobs_pb2.QueueJobRequest(spec=spec), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "an array's limit (--array …%N) is for the jobs of an array" in str(refused.value.details())


def test_a_pool_runs_at_most_its_size_of_the_jobs_naming_it(server: ServerProcess) -> None:
    """Airflow's pools, Slurm's licenses: `pool set db 2`, then five jobs naming it (an array's,
    submitted together): never
    more than two run at once, the queue says why the others wait, `pool list` counts them.
    Bad input is refused, with nothing written."""
    url = server.database_url
    assert server.cli("pool", "set", "db", "2", check=True).stdout.split()[-4:] == ["db", "2", "0", "0"]
    ran = server.cli("job", "run", "-p", "local", "-c", "sleep 1", "--array", "0-4", "--pool", "db", check=True)
    job_ids = ran.stdout.split()
    try:
        waiting = out_of_line(server, job_ids, "the pool's jobs past its size wait, saying why")
        # The jobs before it may not have started yet: "0 running, 2 of its jobs before it".
        reason = waiting[0]["reason"]
        assert re.match(r"its pool db runs at most 2 jobs at once: [0-2] running", reason), reason
        [listed] = json.loads(server.cli("pool", "list", "-o", "json", check=True).stdout)
        assert (listed["name"], listed["size"]) == ("db", 2) and listed["running"] <= 2
        assert "Pool: db (`pool get db`)" in server.cli("job", "get", job_ids[0], check=True).stdout
    finally:  # none of them left running into the next test
        for job_id in job_ids:
            wait_settled(url, job_id, 60)
    assert_at_most_two_at_once(url, job_ids)
    assert json.loads(server.cli("pool", "get", "db", "-o", "json", check=True).stdout) == {
        "name": "db",
        "size": 2,
        "running": 0,
        "queued": 0,
    }

    events = query(url, "SELECT count(*) FROM domain_events")
    for args, said in [
        (("job", "run", "-p", "local", "-c", "true", "--pool", "nowhere"), "no pool 'nowhere'"),
        (("job", "run", "-p", "local", "-c", "true", "--pool", "x/y"), "a pool's name is 1 to 63"),
        (("pool", "set", "two words", "1"), "a pool's name is 1 to 63"),
        (("pool", "set", "db", "-1"), "size"),
        (("pool", "set", "db", "100001"), "a pool's size is 0 (its jobs wait) to 100000"),
        (("pool", "delete", "nowhere"), "pool 'nowhere' not found"),
    ]:
        refused = server.cli(*args)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
    assert query(url, "SELECT count(*) FROM domain_events") == events
    server.cli("pool", "delete", "db", check=True)
    assert json.loads(server.cli("pool", "list", "-o", "json", check=True).stdout) == []
    retried = server.cli("job", "retry", job_ids[0])  # its pool is gone: it would wait for ever
    assert retried.returncode == 2 and "no pool 'db'" in retried.stderr, retried.stderr


def test_a_submitters_limit_runs_at_most_that_many_of_its_jobs_at_once(server: ServerProcess) -> None:
    """Slurm's MaxJobs per user: `limit set anonymous 2` (the submitter without
    authentication), then five jobs of it: never more than two run at once, the queue says
    why the others wait, `limit list` counts them. Bad input is refused, with nothing
    written; deleting the limit lifts it."""
    url = server.database_url
    try:
        set_ = server.cli("limit", "set", "anonymous", "2", check=True)
        assert set_.stdout.split()[-5:] == ["anonymous", "2", "-", "0", "0"]
        job_ids = server.cli("job", "run", "-p", "local", "-c", "sleep 1", "--array", "0-4", check=True).stdout.split()
        waiting = out_of_line(server, job_ids, "the submitter's jobs past its limit wait, saying why")
        assert waiting[0]["reason"].startswith(
            "its submitter anonymous runs at most 2 jobs at once (limit get anonymous): "
        ), waiting[0]["reason"]
        listed = json.loads(server.cli("limit", "list", "-o", "json", check=True).stdout)
        [mine] = [found for found in listed if found["submitter"] == "anonymous"]
        assert (mine["limited"], mine["jobs"], mine["own"]) == (True, 2, True) and mine["running"] <= 2
        for job_id in job_ids:
            wait_settled(url, job_id, 60)
        assert_at_most_two_at_once(url, job_ids)
        server.cli("limit", "set", "*", "1", check=True)
        table = server.cli("limit", "list", check=True).stdout.splitlines()
        assert [line.split() for line in table[1:]] == [
            ["*", "1", "none", "0", "0"],
            ["anonymous", "2", "-", "0", "0"],
        ], table
        server.cli("limit", "set", "anonymous", "none", check=True)
        assert server.cli("limit", "get", "anonymous", check=True).stdout.split()[-5:] == [
            "anonymous",
            "none",
            "-",
            "0",
            "0",
        ]
        server.cli("limit", "delete", "anonymous", check=True)
        assert server.cli("limit", "get", "anonymous", check=True).stdout.split()[-6:] == [
            "anonymous",
            "1",
            "(*)",
            "-",
            "0",
            "0",
        ]

        events = query(url, "SELECT count(*) FROM domain_events")
        for args, said in [
            (("limit", "set", "two words", "1"), "a submitter is a token's name"),
            (("limit", "set", "alice", "-1"), "takes a number, none (no limit) or * (*'s), got '-1'"),
            (("limit", "set", "alice", "few"), "takes a number, none (no limit) or * (*'s), got 'few'"),
            (("limit", "set", "alice", "100001"), "a submitter's limit is 0 (its jobs wait) to 100000 jobs at once"),
            (("limit", "delete", "nobody"), "submitter nobody has no limit of its own"),
            (("limit", "get", "a/b"), "a submitter is a token's name"),
        ]:
            refused = server.cli(*args)
            assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
        assert query(url, "SELECT count(*) FROM domain_events") == events
    finally:
        server.cli("limit", "delete", "*")
        server.cli("limit", "delete", "anonymous")
    assert json.loads(server.cli("limit", "list", "-o", "json", check=True).stdout) == []


def test_after_array_starts_a_reduce_once_every_job_of_the_map_succeeded(
    server: ServerProcess, shared_dir: Path
) -> None:
    """Slurm's `--dependency=afterok:<array job id>`: named by any job of the array (here
    @latest, its last), the reduce waits for all of them."""
    url = server.database_url
    mapped = server.cli("job", "run", "-p", "local", "-c", "sleep 1", "--array", "0-2", check=True).stdout.split()
    reduce = server.cli(
        "job", "run", "-p", "local", "-c", "true", "--after-array", "@latest", check=True
    ).stdout.strip()
    shown = server.cli("job", "get", reduce, check=True).stdout
    assert f"After: {', '.join(f'{job_id} once it has succeeded' for job_id in sorted(mapped))}\n" in shown
    wait_settled(url, reduce)
    ended = query(url, "SELECT max(completed_at) FROM jobs WHERE id = ANY(%s::uuid[])", (mapped,))[0][0]
    assert query(url, "SELECT state, started_at >= %s FROM jobs WHERE id = %s", (ended, reduce)) == [
        ("SUCCEEDED", True)
    ]
    # A job of the map retried (`job retry`) stands by its newest copy, which joins the array.
    fixed = shared_dir / "fixed"
    command = f'test "$HODEI_ARRAY_INDEX" = 0 || test -e {fixed}'
    failed = server.cli("job", "run", "-p", "local", "-c", command, "--array", "0-1", check=True)
    flaky = failed.stdout.split()[1]
    wait_settled(url, flaky)
    refused = server.cli("job", "run", "-p", "local", "-c", "true", "--after-array", flaky)
    assert refused.returncode == 2 and f"job {flaky} ended FAILED" in refused.stderr
    fixed.touch()
    copy = server.cli("job", "retry", flaky, "--wait", check=True).stdout.strip()
    after_copy = server.cli("job", "run", "-p", "local", "-c", "true", "--after-array", flaky, check=True)
    shown = json.loads(server.cli("-o", "json", "job", "get", after_copy.stdout.strip(), check=True).stdout)
    assert flaky not in shown["spec"]["after"] and copy in shown["spec"]["after"]
    for flags, said in [
        (("--after-array", reduce), f"after-array: job {reduce} is not a job of an array"),
        (("--after-array", f"{mapped[1]}:notok"), "ended SUCCEEDED, and this job was to start once it has failed"),
        (("--after-array", mapped[0], "--after", mapped[2]), f"after: job {mapped[2]} is named twice"),
    ]:
        refused = server.cli("job", "run", "-p", "local", "-c", "true", *flags)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr


def test_a_secret_env_file_gives_secrets_masked_and_never_in_the_spec(server: ServerProcess, tmp_path: Path) -> None:
    """A .env of credentials: each line a --secret (sealed, masked), not a spec variable."""
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# the service's keys\nAPI_KEY=k3y-from-the-file\nTOKEN=t0ken-from-the-file\n")
    ran = server.cli(
        "job",
        "run",
        "-p",
        "local",
        "--secret-env-file",
        str(secrets),
        "--secret",
        "TOKEN=t0ken-from-the-flag",
        "-c",
        # Its value is not written whole (a submission writing a secret's value is refused).
        'echo "$API_KEY $TOKEN"; [ "${TOKEN#t0ken-from-the-}" = flag ] && echo the flag wins',
        "--follow",
        check=True,
    )
    assert ran.stdout == "*** ***\nthe flag wins\n"
    job_id = ran.stderr.split("Job ID: ")[1].split()[0]
    shown = server.cli("job", "get", job_id, check=True).stdout
    assert "Secrets: API_KEY, TOKEN" in shown and "from-the-file" not in shown
    events = server.cli("-o", "json", "job", "events", job_id, check=True).stdout
    assert "from-the-file" not in events


def test_job_get_says_what_the_job_was_given_to_run_with(server: ServerProcess) -> None:
    """Its limits, priority, labels and variables were only in ``-o json`` (and the console)."""
    given = ["--timeout", "10m", "--queue-timeout", "1h", "--cpu", "0.5", "--memory", "64Mi", "--disk", "2G"]
    given += ["--priority", "5"]
    given += ["--max-attempts", "2", "--working-dir", "/tmp", "--label", "team=data", "--env", "B=2,A=1"]
    job_id = server.cli("job", "run", "-p", "local", "-c", "true", *given, check=True).stdout.strip()
    shown = server.cli("job", "get", job_id, check=True).stdout.splitlines()
    start = shown.index("Timeout: 600 s")
    assert shown[start : start + 8] == [
        "Timeout: 600 s",
        "Queue timeout: 3600 s",
        "Resources: 0.5 CPU, 64.0 MiB memory, 1.9 GiB disk",
        "Priority: 5",
        "Max attempts: 2",
        "Working dir: /tmp",
        "Labels: team=data",
        "Environment: A, B",
    ]
    plain = server.cli("job", "run", "-p", "local", "-c", "true", check=True).stdout.strip()
    shown = server.cli("job", "get", plain, check=True).stdout.splitlines()
    assert shown[shown.index("Timeout: 600 s") + 1].startswith("Created: ")


def test_what_a_submitter_wrote_reaches_a_readers_terminal_as_escapes_its_output_as_it_was(
    server: ServerProcess,
) -> None:
    """A job's command went to the terminal of whoever ran `job get` with its escape
    sequences acting: here a colour, a cleared screen and a window title (kubectl's
    CVE-2021-25743). Its output stays as it printed it, colours and all."""
    command = "printf '\\033[31mred\\n' # \x1b[31mred \x1b[2J \x1b]0;title\x07"
    job_id = server.cli("job", "run", "-p", "local", "-c", command, "--wait", check=True).stdout.strip()
    for shown in (server.cli("job", "get", job_id, check=True), server.cli("job", "describe", job_id, check=True)):
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
        assert "# \\x1b[31mred \\x1b[2J \\x1b]0;title\\x07" in shown.stdout, shown.stdout
    assert server.cli("job", "logs", job_id, check=True).stdout == "\x1b[31mred\n"


def test_timestamps_stamp_each_line_once_on_its_own_stream(server: ServerProcess) -> None:
    """A long line reaches the CLI in pieces: only its first is stamped."""
    long_line = 'python3 -c \'import sys; sys.stdout.write("x" * 300000 + "\\n")\''
    command = f"echo one; echo oops >&2; {long_line}; echo two"
    ran = server.cli("job", "run", "-p", "local", "-c", command, "--follow", "--timestamps", check=True)
    job_id = ran.stderr.split("Job ID: ")[1].split()[0]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    for shown in (ran, server.cli("job", "logs", job_id, "-t", check=True)):
        assert re.fullmatch(f"{stamp}one\n{stamp}x{{300000}}\n{stamp}two\n", shown.stdout), shown.stdout[:200]
        assert re.search(f"^{stamp}oops$", shown.stderr, re.MULTILINE), shown.stderr
    plain = server.cli("job", "logs", job_id, check=True)
    assert plain.stdout == f"one\n{'x' * 300000}\ntwo\n"


def test_a_retried_jobs_log_says_where_each_attempt_begins(server: ServerProcess, shared_dir: Path) -> None:
    """Every attempt's output is in the job's log; a reader sees which attempt printed what."""
    tries = shared_dir / "tries"
    command = (
        f"n=$(( $(cat {tries} 2>/dev/null || echo 0) + 1 )); echo $n > {tries}; echo try $n; sleep 0.5; [ $n -ge 3 ]"
    )
    # Held until `job watch` shows it, which then sees every attempt whatever the machine's pace.
    submitted = server.cli(
        "job", "run", "-p", "local", "-c", command, "--retry", "2", "--retry-backoff", "0.1", "--hold", check=True
    )
    job_id = submitted.stdout.strip()
    watcher = server.spawn("job", "watch", job_id)
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline().rstrip("\n")
        server.cli("job", "release", job_id, check=True)
        rest, _ = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    # `job watch` shows each change of state or attempt once.
    watched = [first, *rest.splitlines()]
    assert first.startswith(f"{job_id} PENDING"), watched
    assert all(line.startswith(f"{job_id} ") for line in watched)
    assert all(earlier != later for earlier, later in pairwise(watched)), watched
    assert any(line.endswith("RUNNING (Status Code: 3), attempt 2") for line in watched), watched
    assert watched[-1].endswith(" SUCCEEDED (Status Code: 4), attempt 3")
    # Each attempt knows which it is (HODEI_ATTEMPT), as a command resuming from a checkpoint would ask.
    command = 'echo try $HODEI_ATTEMPT; sleep 0.5; [ "$HODEI_ATTEMPT" -ge 3 ]'
    ran = server.cli("job", "run", "-p", "local", "-c", command, "--retry", "2", "--retry-backoff", "0.1", "--follow")
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stderr.split("Job ID: ")[1].split()[0]

    def merged(*args: str) -> str:
        """stdout and stderr as one reader of a terminal sees them: in the order written."""
        return subprocess.run(
            [str(BIN / "hodei-jobs-cli"), "--server", server.address, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1", "HODEI_CONFIG": "/nonexistent/hodei.toml"},
            check=True,
        ).stdout

    marked = "try 1\n[hodei] attempt 2\ntry 2\n[hodei] attempt 3\ntry 3\n"
    assert merged("job", "logs", job_id) == marked
    assert ran.stdout == "try 1\ntry 2\ntry 3\n"  # the markers are not the job's output
    assert "[hodei] attempt 2\n[hodei] attempt 3\n" in ran.stderr
    assert merged("job", "logs", job_id, "--attempt", "2") == "[hodei] attempt 2\ntry 2\n"
    lines = [
        json.loads(line) for line in server.cli("-o", "json", "job", "logs", job_id, check=True).stdout.splitlines()
    ]
    assert [(line["line"], line["attempt"], line["line_number"]) for line in lines] == [
        ("try 1", 1, 1),
        ("try 2", 2, 2),
        ("try 3", 3, 3),
    ]
    beyond = server.cli("job", "logs", job_id, "--attempt", "4")
    assert beyond.returncode == 2 and "has had 3 attempt(s); there is no attempt 4" in beyond.stderr
    # A job that ran once shows no marker.
    once = server.cli("job", "run", "-p", "local", "-c", "echo once", "--wait", check=True).stdout.strip()
    assert merged("job", "logs", once) == "once\n"


def test_retry_on_spends_the_retries_only_on_the_failures_it_names(server: ServerProcess) -> None:
    # A program's "try again" code (75, EX_TEMPFAIL) twice, then a usage error: the third
    # attempt is not retried though one retry is left, and the job says why.
    command = '[ "$HODEI_ATTEMPT" -le 2 ] && exit 75; exit 2'
    run = ("job", "run", "-p", "local", "-c", command, "--retry", "3", "--retry-backoff", "0.1")
    ran = server.cli(*run, "--retry-on", "75, timeout", "--retry-on", "!2", "--wait")
    assert ran.returncode == 2, ran.stderr
    job_id = ran.stdout.strip()
    shown = server.cli("job", "get", job_id, check=True).stdout
    assert "Attempt: 3\n" in shown and "Exit code: 2\n" in shown, shown
    assert "Error: exited with code 2; not retried (--retry-on 75,timeout,!2)\n" in shown, shown
    assert "Retries: 3 (backoff 0.1 s; --retry-on 75,timeout,!2)\n" in shown, shown
    spec = json.loads(server.cli("-o", "json", "job", "get", job_id, check=True).stdout)["spec"]
    assert spec["retry_on"] == ["75", "timeout", "!2"]
    # Without the rule the same job spends every retry.
    assert server.cli(*run, "--wait").returncode == 2
    assert "Attempt: 4\n" in server.cli("job", "get", "@latest", check=True).stdout
    # Pauses that double (--retry-backoff-max): 0.1 s, then 0.2 s, each retry still spent.
    doubling = server.cli(*run[:-1], "0.1", "--retry-backoff-max", "0.2", "--wait")
    assert doubling.returncode == 2, doubling.stderr
    shown = server.cli("job", "get", doubling.stdout.strip(), check=True).stdout
    assert "Attempt: 4\n" in shown and "Retries: 3 (backoff 0.1 s, doubling up to 0.2 s)\n" in shown, shown
    # A rule with no retries to spend, and a term that is no exit code, are refused: nothing written.
    before = query(server.database_url, "SELECT count(*) FROM jobs")
    refused = server.cli("job", "run", "-p", "local", "-c", "true", "--retry-on", "75")
    assert refused.returncode == 2 and "the job has no retries (--retry N)" in refused.stderr
    refused = server.cli("job", "run", "-p", "local", "-c", "true", "--retry", "1", "--retry-on", "75,oops")
    assert refused.returncode == 2 and "--retry-on term `oops`: expected an exit code 1-255" in refused.stderr
    refused = server.cli("job", "run", "-p", "local", "-c", "true", "--retry", "1", "--retry-backoff-max", "1m")
    assert refused.returncode == 2 and "the most retry backoff must be from the retry backoff" in refused.stderr
    assert query(server.database_url, "SELECT count(*) FROM jobs") == before


def test_following_one_attempt_ends_when_the_next_begins(server: ServerProcess, shared_dir: Path) -> None:
    tries, go = shared_dir / "tries", shared_dir / "go"
    waits = f"while [ ! -e {go} ]; do sleep 0.1; done"
    command = (
        f"n=$(( $(cat {tries} 2>/dev/null || echo 0) + 1 )); echo $n > {tries}; echo try $n; [ $n -ge 2 ] && {waits}"
    )
    job_id = server.cli("job", "run", "-p", "local", "-c", command, "--retry", "1", "--retry-backoff", "0.1").stdout
    job_id = job_id.strip()
    follower = server.spawn("job", "logs", job_id, "--attempt", "1", "--follow")
    out, _ = follower.communicate(timeout=60)
    assert (follower.returncode, out) == (0, "try 1\n")
    ((state, attempt),) = query(server.database_url, "SELECT state, attempt FROM jobs WHERE id = %s", (job_id,))
    assert (state in ("PENDING", "ASSIGNED", "RUNNING"), attempt) == (True, 2)  # ended before the job, which waits
    go.touch()
    wait_settled(server.database_url, job_id)
    assert server.cli("job", "logs", job_id, "--attempt", "2", check=True).stdout == "try 2\n"


def test_job_get_and_job_run_say_where_a_queued_job_waits_and_why(server: ServerProcess, shared_dir: Path) -> None:
    with contextlib.ExitStack() as cleanup:  # the follower's pipes closed, whatever fails
        go = shared_dir / "go"
        server.cli("provider", "capacity", "local", "1", check=True)
        try:
            holder = server.cli(
                "job", "run", "-p", "local", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done", check=True
            )
            wait_running(server.database_url, holder.stdout.strip())
            queued = server.cli("job", "run", "-p", "local", "-c", "true", "--priority", "5", check=True).stdout.strip()

            def place() -> str | None:
                shown = server.cli("job", "get", queued, check=True).stdout
                return shown if "Waiting: place" in shown else None

            shown = eventually(place, 30, what="the queued job's place")
            assert re.search(
                r"^Waiting: place 1 in provider local's queue, \d+s so far: provider local is full: 1 of 1 workers$",
                shown,
                re.MULTILINE,
            ), shown
            assert "Waiting:" not in server.cli("job", "get", holder.stdout.strip(), check=True).stdout
            assert "waiting" not in server.cli("-o", "json", "job", "get", queued, check=True).stdout.lower()
            # `job run --follow` of a job that waits says so once, on stderr, and then streams its output.
            follower = cleanup.enter_context(server.spawn("job", "run", "-p", "local", "-c", "echo ran", "--follow"))
            cleanup.callback(follower.kill)  # first: a follower still waiting is not waited for
            said: list[str] = []
            assert follower.stdout is not None and follower.stderr is not None
            stderr = follower.stderr
            reader = threading.Thread(target=lambda: said.extend(iter(stderr.readline, "")), daemon=True)
            reader.start()
            eventually(lambda: any(line.startswith("Waiting: place 2 ") for line in said) or None, 30, what="the note")
        finally:
            server.cli("provider", "capacity", "local", "0", check=True)
            go.touch()
        wait_settled(server.database_url, queued)
        assert "Waiting:" not in server.cli("job", "get", queued, check=True).stdout
        follower.wait(timeout=60)
        reader.join(timeout=10)
        assert follower.stdout is not None and follower.stderr is not None
        with follower.stdout, follower.stderr:
            out = follower.stdout.read()
        new_id = said[0].split()[-1]
        assert (follower.returncode, out, len(said)) == (0, "ran\n", 3), said
        assert (said[0], said[2]) == (f"Job ID: {new_id}\n", f"Job {new_id} SUCCEEDED (Status Code: 4)\n")


def test_tail_begins_with_the_last_lines_and_follows_from_there(server: ServerProcess, shared_dir: Path) -> None:
    ended = server.cli("job", "run", "-p", "local", "-c", "seq 1 50", "--wait", check=True).stdout.strip()
    assert server.cli("job", "logs", ended, "--tail", "3", check=True).stdout == "48\n49\n50\n"
    assert server.cli("job", "logs", ended, "--tail", "500", check=True).stdout.splitlines() == [
        str(n) for n in range(1, 51)
    ]
    both = server.cli("job", "logs", ended, "--tail", "3", "--attempt", "1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    with server.channel() as channel:  # the API refuses them too
        stub = logs_pb2_grpc.LogStreamServiceStub(channel)
        wrongs: tuple[dict[str, Any], ...] = ({"tail": -1}, {"tail": 3, "attempt": 1})
        for wrong in wrongs:
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=ended, **wrong), timeout=30))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, wrong
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetLogs(logs_pb2.GetLogsRequest(job_id=ended, **wrong), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, wrong
        page = stub.GetLogs(logs_pb2.GetLogsRequest(job_id=ended, tail=2), timeout=30)
        assert [(entry.line_number, entry.line) for entry in page.entries] == [(49, "49"), (50, "50")]
        # A stream says first where its tail begins: a client connecting again asks from there.
        said = list(stub.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=ended, tail=2), timeout=30))
        assert (said[0].from_line, len(said[0].entries)) == (49, 0)
        assert [entry.line for batch in said for entry in batch.entries] == ["49", "50"]
    go = shared_dir / "go"
    running = server.cli(
        "job", "run", "-p", "local", "-c", f"seq 1 5; while [ ! -e {go} ]; do sleep 0.1; done; echo later", check=True
    ).stdout.strip()
    eventually(lambda: server.cli("job", "logs", running).stdout == "1\n2\n3\n4\n5\n", 30)
    follower = server.spawn("job", "logs", running, "--tail", "2", "--follow")
    assert follower.stdout is not None
    assert [follower.stdout.readline(), follower.stdout.readline()] == ["4\n", "5\n"]
    go.touch()
    rest, _ = follower.communicate(timeout=60)
    assert (follower.returncode, rest) == (0, "later\n")


def test_tail_0_prints_nothing_so_far_and_follows_only_what_comes(server: ServerProcess, shared_dir: Path) -> None:
    """`tail -n 0 -f`, `docker logs -f --tail 0`: it was refused (0 went out as the field's
    unset value, which means no limit)."""
    ended = server.cli("job", "run", "-p", "local", "-c", "seq 1 3", "--wait", check=True).stdout.strip()
    assert server.cli("job", "logs", ended, "--tail", "0", check=True).stdout == ""
    go = shared_dir / "go-tail-0"
    running = server.cli(
        "job", "run", "-p", "local", "-c", f"seq 1 3; until [ -e {go} ]; do echo tick; sleep 0.2; done; echo later"
    ).stdout.strip()
    eventually(lambda: server.cli("job", "logs", running).stdout.startswith("1\n2\n3\ntick\n"), 30)
    follower = server.spawn("job", "logs", running, "--tail", "0", "--follow")
    assert follower.stdout is not None
    assert follower.stdout.readline() == "tick\n"  # a line printed since, not the log's first
    go.touch()
    rest, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0 and rest.endswith("later\n") and set(rest.splitlines()) <= {"tick", "later"}


def test_a_unique_prefix_of_eight_characters_is_an_id(server: ServerProcess) -> None:
    job_id = server.cli("job", "run", "--provider", "local", "--command", "echo prefixed", "--wait", check=True)
    job_id_text = job_id.stdout.strip()
    wait_settled(server.database_url, job_id_text, 60)
    for given in (job_id_text[:8], job_id_text[:13], job_id_text.upper()):
        shown = server.cli("job", "get", given, check=True).stdout
        assert shown.startswith(f"Job {job_id_text}\n")
    assert server.cli("job", "logs", job_id_text[:8], check=True).stdout == "prefixed\n"
    too_short = server.cli("job", "get", job_id_text[:7])
    assert too_short.returncode != 0
    assert "a prefix needs 8 characters" in too_short.stderr
    unknown = server.cli("job", "get", "ffffffff-ff")
    assert "no job id starts with ffffffff-ff" in unknown.stderr
    (saga_id,) = query(
        server.database_url,
        "SELECT id::text FROM sagas WHERE correlation_id = %s AND saga_type = 'EXECUTION'",
        (job_id_text,),
    )[0]
    assert server.cli("saga", "show", saga_id[:8], check=True).stdout.startswith(f"EXECUTION saga {saga_id}")


def test_an_ambiguous_prefix_is_refused(server: ServerProcess) -> None:
    # Two jobs whose ids share their first 8 characters, written as the API would not:
    # straight into the read model (the chance of meeting it by accident is tiny).
    base = "abcdef12-0000-4000-8000-"
    for tail in ("000000000001", "000000000002"):
        query(
            server.database_url,
            "INSERT INTO jobs (id, name, state, spec, attempt, max_attempts, created_at, updated_at) "
            "VALUES (%s, 'twin', 'CANCELLED', '{}', 1, 1, now(), now())",
            (base + tail,),
        )
    refused = server.cli("job", "get", "abcdef12")
    assert refused.returncode != 0
    assert "abcdef12 is the start of more than one job id; give more of it" in refused.stderr
    query(server.database_url, "DELETE FROM jobs WHERE id::text LIKE 'abcdef12-%%'")


def test_tables_never_cut_an_id_even_on_a_narrow_terminal(server: ServerProcess) -> None:
    job_id = server.cli("job", "run", "--provider", "local", "--command", "true", check=True).stdout.strip()
    # A terminal 40 columns wide (rich draws the table): the id folds onto lines, whole.
    env = {**os.environ, "COLUMNS": "40", "TERM": "xterm", "NO_COLOR": "1", "HODEI_CONFIG": "/nonexistent"}
    script = (
        "import sys; from rich.console import Console; import hodei.cli.terminal as t; "
        "t.Console = lambda **kw: Console(**{**kw, 'force_terminal': True, 'width': 40}); "
        "from hodei.cli.main import main; main(sys.argv[1:])"
    )
    shown = subprocess.run(
        [str(BIN / "python"), "-c", script, "--server", server.address, "job", "list", "--limit", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    cells = "".join(line.split("│")[1].strip() for line in shown.stdout.splitlines() if line.count("│") > 2)
    assert job_id in cells


def waiting_for(server: ServerProcess, command: str) -> tuple[subprocess.Popen[str], str]:
    """`job run --wait` in its own process, once its job runs; and the job's id."""
    waiting = server.spawn("job", "run", "--provider", "local", "--command", command, "--wait")
    assert waiting.stdout is not None
    job_id = waiting.stdout.readline().strip()
    wait_running(server.database_url, job_id)
    return waiting, job_id


def test_wait_survives_a_server_restart_and_ends_with_the_jobs_exit_code(server: ServerProcess) -> None:
    waiting, job_id = waiting_for(server, "sleep 6; exit 3")
    server.stop(signal.SIGKILL)
    time.sleep(2)
    server.start()
    _, errors = waiting.communicate(timeout=120)
    assert waiting.returncode == 3, errors
    assert f"Job {job_id} FAILED" in errors


def test_log_followers_outlive_a_server_restart_and_print_every_line_once(server: ServerProcess) -> None:
    command = "for i in $(seq 1 16); do echo line $i; sleep 0.5; done"
    running = server.spawn("job", "run", "--provider", "local", "--command", command, "--follow")
    job_id = server.cli("job", "run", "--provider", "local", "--command", command, check=True).stdout.strip()
    wait_running(server.database_url, job_id)
    following = server.spawn("job", "logs", "--id", job_id, "--follow")
    time.sleep(3)  # a few lines out first
    server.stop(signal.SIGKILL)
    time.sleep(2)
    server.start()
    for follower in (running, following):
        out, errors = follower.communicate(timeout=120)
        assert follower.returncode == 0, errors
        assert out.splitlines() == [f"line {i}" for i in range(1, 17)], errors


def test_a_tail_0_follower_cut_before_its_first_line_misses_none_that_came_meanwhile(
    server: ServerProcess, shared_dir: Path
) -> None:
    """Connecting again it asked for the tail anew, from the log's end by then: a line
    printed while it was cut off was never shown. The server says where a tail begins, and
    the follower comes back to that line."""
    go = shared_dir / "go-tail-cut"
    command = f"seq 1 3; until [ -e {go} ]; do sleep 0.1; done; echo meanwhile; sleep 2; echo after"
    job_id = server.cli("job", "run", "-p", "local", "-c", command, check=True).stdout.strip()
    eventually(lambda: server.cli("job", "logs", job_id).stdout == "1\n2\n3\n", 30)
    link = Link(("127.0.0.1", server.port))
    link.up()
    follower = Cli(link.url_host).spawn("job", "logs", job_id, "--tail", "0", "--follow")
    try:
        time.sleep(2)  # it has asked, and been told where its tail begins
        link.down()  # to the follower the server is gone; the job and the server go on
        go.touch()
        eventually(lambda: server.cli("job", "logs", job_id).stdout == "1\n2\n3\nmeanwhile\n", 30)
        link.up()
        out, errors = follower.communicate(timeout=120)
    finally:
        follower.kill()
        link.down()
    assert follower.returncode == 0, errors
    assert out == "meanwhile\nafter\n", errors


STOPPED = (grpc.StatusCode.UNAVAILABLE, ShuttingDown().message)


def test_a_stopping_server_ends_its_streams_at_once_saying_why(server: ServerProcess) -> None:
    """A worker's stream, a log follower's and a job watcher's never end by themselves:
    left to the stop's grace (5 s), each was cancelled after it and logged as an error
    not handled, at every restart. Now each ends at the stop with UNAVAILABLE, which the
    agent and the CLI take as "again, or another server": the job goes on. A follower of
    a job that prints without pause is stopped in the middle of a send (yielded to gRPC to
    send, such a message took the cancel, and the call ended with gRPC's "Cancelling all
    calls" after the grace)."""
    command = "echo started; sleep 6; echo done"
    job_id = server.cli("job", "run", "--provider", "local", "--command", command, check=True).stdout.strip()
    chatty = server.cli("job", "run", "--provider", "local", "--command", "seq 1 999999999", check=True).stdout.strip()
    wait_running(server.database_url, job_id)
    said_before = len(server.logs())
    with server.channel() as channel:
        logs = logs_pb2_grpc.LogStreamServiceStub(channel)
        follow = logs.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=job_id, follow=True))
        flood = logs.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=chatty, follow=True))
        watch = jobs_pb2_grpc.JobExecutionServiceStub(channel).WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))
        next(follow), next(watch), next(flood)  # all open: the lines so far, the job as it is
        with ThreadPoolExecutor(1) as reader:
            flooded = reader.submit(list, flood)  # read as the CLI does: as fast as they come
            time.sleep(1)
            server.stop()
            for stream in (follow, watch):
                with pytest.raises(grpc.RpcError) as ended:
                    list(stream)
                assert (ended.value.code(), ended.value.details()) == STOPPED
            with pytest.raises(grpc.RpcError) as ended:
                flooded.result(timeout=60)
            assert (ended.value.code(), ended.value.details()) == STOPPED
    said = server.logs()[said_before:]
    assert "Exception not handled" not in said and " ERROR " not in said, said
    server.start()
    wait_settled(server.database_url, job_id)
    assert server.cli("job", "logs", job_id, check=True).stdout.splitlines() == ["started", "done"]
    assert query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
    server.cli("job", "cancel", "--force", chatty, check=True)
    wait_settled(server.database_url, chatty)


def test_ctrl_c_while_waiting_says_the_job_keeps_running(server: ServerProcess) -> None:
    waiting, job_id = waiting_for(server, "sleep 30")
    waiting.send_signal(signal.SIGINT)
    _, errors = waiting.communicate(timeout=30)
    assert waiting.returncode == 131
    assert f"job {job_id} keeps running (`hodei-jobs-cli job cancel {job_id}` stops it)" in errors
    assert query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)]
    server.cli("job", "cancel", job_id, check=True)


def test_wait_and_follow_print_one_json_object_per_line(server: ServerProcess) -> None:
    ran = server.cli(
        "job", "run", "--provider", "local", "--command", "echo one; echo two >&2; exit 4", "--follow", "-o", "json"
    )
    assert ran.returncode == 4
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert all(set(line) == {"event", "job", "log"} for line in lines)
    logs = [line["log"] for line in lines if line["event"] == "log"]
    # The two streams are read apart: their lines' order between them is not the job's.
    assert sorted((entry["line"], entry["stream"]) for entry in logs) == [
        ("one", "LOG_STREAM_STDOUT"),
        ("two", "LOG_STREAM_STDERR"),
    ]
    states = [line["job"] for line in lines if line["event"] == "state"]
    assert states[-1]["state"] == "FAILED"
    assert states[-1]["exit_code"] == 4
    assert isinstance(states[-1]["attempt"], int)
    waited = server.cli("job", "run", "--provider", "local", "--command", "true", "--wait", "-o", "json")
    assert waited.returncode == 0
    last = json.loads(waited.stdout.splitlines()[-1])
    assert (last["event"], last["job"]["state"], last["job"]["exit_code"]) == ("state", "SUCCEEDED", 0)


def run_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI in this process: its exit code and its whole output."""
    with pytest.raises(SystemExit) as ended:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_version_did_you_mean_help_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_in_process(capsys, "--version")
    assert (code, out) == (0, f"hodei-jobs-cli {version('hodei-jobs')}\n")
    code, _, err = run_in_process(capsys, "jbo", "list")
    assert code == 2
    assert err.splitlines()[-1].endswith(
        "invalid choice: 'jbo' (choose from 'job', 'saga', 'provider', 'pool', 'limit', 'queue', 'worker', 'metrics', "
        "'outbox', 'token', 'whoami', 'cron', 'webhook', 'audit', 'report', 'config', 'completion', 'schema'); "
        "did you mean 'job'?"
    )
    code, _, err = run_in_process(capsys, "job", "lsit")
    assert code == 2
    assert "did you mean 'list'?" in err
    code, out, _ = run_in_process(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out and "131    Ctrl-C while waiting: the job keeps running" in out
    assert "examples:" in out
    for shell, marker in (("bash", "complete -o"), ("zsh", "#compdef hodei-jobs-cli")):
        code, out, _ = run_in_process(capsys, "completion", shell)
        assert code == 0
        assert marker in out
        assert "describe" in out and "dead-letters" in out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("job", "list", "--limit", "0"), "takes a whole number from 1 to 2147483647, got '0'"),
        (("job", "history", "--id", "x", "--version", "0"), "takes a whole number from 1 to 2147483647, got '0'"),
        (("saga", "list", "--limit", "-1"), "takes a whole number from 1 to 2147483647, got '-1'"),
        (("worker", "list", "--limit", "many"), "takes a whole number from 1 to 2147483647, got 'many'"),
        (("job", "list", "--limit", "2147483648"), "takes a whole number from 1 to 2147483647, got '2147483648'"),
        (("job", "list", "--offset", "-1"), "takes a whole number from 0 to 2147483647, got '-1'"),
        (("provider", "capacity", "local", "99999999999"), "from 0 to 2147483647, got '99999999999'"),
        (("job", "logs", "x", "--attempt", "0"), "takes a whole number from 1 to 2147483647, got '0'"),
        (("job", "logs", "x", "--tail", "-1"), "takes a whole number from 0 to 2147483647, got '-1'"),
        (("job", "run", "-c", "true", "--priority", "-99999999999"), "priority must be between -1000 and 1000"),
        (("job", "run", "-c", "true", "--retry", "99999999999"), "retries must be between 0 and 100"),
        (("job", "run", "-c", "true", "--timeout", "1e400"), "timeout must be a positive number of seconds, got inf"),
        (("job", "run", "-c", "true", "--memory", "9" * 30), "memory must be between 0 (the default) and"),
        (("job", "run", "-c", "true", "--disk", "2Pi"), "disk must be between 0 (no limit) and 1125899906842624"),
        (("job", "run", "-c", "true", "--disk=-1G"), "malformed --disk `-1G`: use bytes or a unit such as"),
        (("job", "run", "-c", "true", "--cpu", "1e400"), "cpu cores must be between 0 (the default) and 256, got inf"),
        (("job", "run", "-c", "true", "--secret", "K=abc"), "secret K is shorter than 4 characters"),
        (("job", "run", "-c", "true", "--array", "0-99999999999"), "an array of at most 1000 jobs"),
        (("job", "run", "-c", "true", "--array", "2147483648"), "array indices must be 0 to 2147483647"),
        (("job", "run", "-c", "true", "--array", "3,1-4"), "an array index is given twice"),
        (("job", "run", "-c", "true", "--array", "4-1"), "`4-1` is no range"),
        (("job", "run", "-c", "true", "--array", "0-1", "--follow"), "--follow streams one job's output"),
        (("job", "run", "-c", "true", "-n", "n" * 254, "--array", "9-10"), "name must be at most 255 characters"),
        (("job", "run", "-c", "true", "--array", "0-9%0"), "%N: at most N of the array's jobs at once, N from 1"),
        (("job", "run", "-c", "true", "--array", "0-9%x"), "%N: at most N of the array's jobs at once, N from 1"),
        (("job", "run", "-c", "true", "--array", "0-9%1001"), "%N: at most N of the array's jobs at once, N from 1"),
        (("job", "run", "-c", "true", "--artifacts-expire", "-5s"), "2m or 1h30m, got '-5s'"),
        (("job", "run", "-c", "true", "--begin", "-5m"), "takes a duration from now such as 10m or 2h"),
        (("cron", "create", "--schedule", "@hourly", "-c", "x", "--starting-deadline", "-1m"), "got '-1m'"),
    ],
    ids=[
        "job-list",
        "history",
        "saga-list",
        "worker-list",
        "past-int32",
        "offset",
        "capacity",
        "attempt",
        "tail",
        "priority",
        "retries",
        "timeout",
        "memory",
        "disk",
        "negative-disk",
        "cpu",
        "secret",
        "array-size",
        "array-index",
        "array-twice",
        "array-range",
        "array-follow",
        "array-name",
        "array-limit-0",
        "array-limit-x",
        "array-limit-big",
        "negative-expire",
        "negative-begin",
        "negative-deadline",
    ],
)
def test_a_number_the_request_cannot_carry_is_refused_before_sending(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], error: str
) -> None:
    """0 would reach the server as the field's unset value and mean its default: `--version 0`
    printed the whole history and `--limit 0` a page of 20; a number past the field's range
    (int32) or the job's limits made the CLI fail with a ValueError and a traceback. Refused
    here, without a server, in the server's own words for a job."""
    code, out, err = run_in_process(capsys, "--server", "127.0.0.1:9", *argv)
    assert (code, out) == (2, "")
    assert error in err.splitlines()[-1], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("grace", "error"),
    [
        (("--grace", "-1"), "takes seconds or a duration such as 30s, 2m or 1h30m, got '-1'"),
        (("--grace", "soon"), "takes seconds or a duration such as 30s, 2m or 1h30m, got 'soon'"),
        (("--grace", "5", "--force"), "argument --force: not allowed with argument --grace"),
    ],
    ids=["negative", "words", "both"],
)
def test_a_bad_cancel_grace_is_refused_before_sending(
    capsys: pytest.CaptureFixture[str], grace: tuple[str, ...], error: str
) -> None:
    code, out, err = run_in_process(capsys, "--server", "127.0.0.1:9", "job", "cancel", "x", *grace)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].endswith(error)


def test_a_server_that_does_not_answer_is_named_within_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, out, err = run_in_process(capsys, "--server", address, "job", "list")
        took = time.monotonic() - started
    assert (code, out) == (1, "")
    assert err == (
        f"hodei-jobs-cli: error: cannot reach the server at {address}: no answer within 3s (is it running there? "
        "--server or HODEI_SERVER names another)\n"
    )
    print(f"answered in {took:.1f}s")


def test_provider_list_says_why_a_provider_is_not_usable(server: ServerProcess) -> None:
    listed = server.cli("provider", "list", check=True).stdout
    docker = next(line for line in listed.splitlines() if "\tdocker\t" in line)
    assert docker.endswith("not enabled on this server (HODEI_DOCKER_ENABLED)")
    server.cli("provider", "disable", "local", check=True)
    try:
        local = next(
            line for line in server.cli("provider", "list", check=True).stdout.splitlines() if "\tlocal\t" in line
        )
        assert "disabled (`provider enable local`)" in local
    finally:
        server.cli("provider", "enable", "local", check=True)
    assert server.cli("provider", "health", "local").returncode == 0


def test_cancel_hold_and_release_take_a_selection_as_job_list_does(server: ServerProcess) -> None:
    """`scancel -u alice -t PENDING`, `kubectl delete -l`: every job the flags match, read
    whole before the first is changed; ids and a selection are not mixed."""

    def submit(label: str, *args: str) -> str:
        ran = server.cli("job", "run", "-p", "local", "-c", "sleep 60", "-l", f"pick={label}", *args, check=True)
        return ran.stdout.strip()

    picked, released, later = (
        [submit("a", "--hold") for _ in range(3)],
        submit("b", "--hold"),
        submit("c", "--begin", "1h"),
    )

    def states() -> dict[str, str]:
        return dict(query(server.database_url, "SELECT id::text, state FROM jobs WHERE spec->'labels' ? 'pick'"))

    cancelled = server.cli("job", "cancel", "-l", "pick=a", "--reason", "picked", check=True)
    assert sorted(re.findall(r"Job (\S+) CANCELLED", cancelled.stderr)) == sorted(picked), cancelled.stderr
    assert states() == {**dict.fromkeys(picked, "CANCELLED"), released: "PENDING", later: "PENDING"}
    shown = server.cli("-o", "json", "job", "release", "-l", "pick=b", "--state", "PENDING", check=True)
    assert [json.loads(line)["id"] for line in shown.stdout.splitlines()] == [released]  # a selection: lines
    held = server.cli("job", "hold", "-l", "pick=c", "--reason", "not yet", check=True)
    assert held.stderr.strip() == f"Job {later} held by anonymous"

    none = server.cli("job", "cancel", "-l", "pick=nothing")
    assert (none.returncode, none.stderr) == (0, "no job matches the selection: nothing to change\n")
    both = server.cli("job", "cancel", later, "-l", "pick=c")
    assert both.returncode == 2 and "give job ids or a selection (--state, --label, --submitter, …), not both" in (
        both.stderr
    )
    # The selection's jobs already ended are each said, and the others cancelled: exit 2.
    again = server.cli("job", "cancel", "-l", "pick")
    assert again.returncode == 2 and again.stderr.count("(FAILED_PRECONDITION)") == 3, again.stderr
    assert f"Job {released} CANCELLED" in again.stderr and f"Job {later} CANCELLED" in again.stderr
    assert server.cli("job", "cancel").stderr == "hodei-jobs-cli: error: give the job id: --id ID\n"


def test_a_change_that_loses_every_race_is_aborted_and_writes_nothing(server: ServerProcess) -> None:
    """A command whose every try finds that another writer changed the job first gives up
    after its tries: ABORTED (gRPC's lost concurrency check), saying to try again, not an
    internal error."""
    job_id = server.cli("job", "run", "-p", "local", "-c", "true", "--hold", check=True).stdout.strip()
    url = server.database_url
    events = query(url, "SELECT count(*) FROM domain_events WHERE correlation_id = %s", (job_id,))
    with every_race_lost(url, job_id, "NEW.priority <> OLD.priority"):
        lost = server.cli("job", "update", job_id, "--priority", "-5")
    assert lost.returncode == 1, lost
    assert "other writers changed it first at each of 8 tries, and each was undone: try again" in lost.stderr
    assert lost.stderr.rstrip().endswith("(ABORTED)"), lost.stderr
    assert "domain_events_aggregate_version_key" in lost.stderr
    assert query(url, "SELECT priority FROM jobs WHERE id = %s", (job_id,)) == [(0,)]
    assert query(url, "SELECT count(*) FROM domain_events WHERE correlation_id = %s", (job_id,)) == events
    server.cli("job", "update", job_id, "--priority", "-5", check=True)
    assert query(url, "SELECT priority FROM jobs WHERE id = %s", (job_id,)) == [(-5,)]
    server.cli("job", "cancel", job_id, check=True)


def test_audit_says_who_changed_the_configuration_and_how(server: ServerProcess) -> None:
    """`audit`: the log's changes to providers, pools, limits, webhooks and cron jobs, each
    with its caller (anonymous here: no tokens) and in words, newest first."""
    server.cli("pool", "set", "audited", "2", check=True)
    server.cli("pool", "set", "audited", "6", check=True)
    shown = server.cli("audit", "--kind", "pool", "--since", "10m", check=True).stdout.splitlines()
    assert shown[0].split("\t") == ["TIME", "BY", "WHAT", "CHANGE"]
    rows = [line.split("\t")[1:] for line in shown[1:] if "\tpool audited\t" in line]
    assert rows == [["anonymous", "pool audited", "size 6"], ["anonymous", "pool audited", "created, size 2"]]
    as_json = json.loads(server.cli("-o", "json", "audit", "--kind", "pool", "--limit", "1", check=True).stdout)
    assert [(c["kind"], c["subject"], c["event_type"], c["change"]) for c in as_json] == [
        ("pool", "audited", "PoolResized", "size 6")
    ]
    assert server.cli("audit", "--actor", "nobody-at-all", check=True).stdout.splitlines()[1:] == []
    for wrong, says in ((("--kind", "jobs"), "unknown kind jobs"), (("--limit", "5000"), "limit is 1 to 1000")):
        refused = server.cli("audit", *wrong)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    server.cli("pool", "delete", "audited", check=True)


def test_a_job_file_submits_the_job_it_holds_and_a_jobs_printed_spec_submits_it_again(
    server: ServerProcess, database_url: str, tmp_path: Path
) -> None:
    """`job run --file job.yaml` (kubectl apply -f, nomad job run): the spec as `job get -o
    json` prints it, sizes and durations as people write them, secrets' values by flag; and
    `job get ID -o json`'s spec, written to a file, submits the same job again."""
    written = tmp_path / "report.yaml"
    written.write_text(
        "name: nightly report\n"
        "provider: local\n"
        'command: echo "report for $REGION"; echo "$TOKEN"\n'
        "env:\n  REGION: eu\n"
        "timeout_seconds: 10m\n"
        "resources:\n  memory_bytes: 256Mi\n"
        "labels:\n  team: data\n"
        "secret_names: [TOKEN]\n"
    )
    ran = server.cli("job", "run", "--file", str(written), "--secret", "TOKEN=s3cr3t-t0ken", "--wait")
    assert ran.returncode == 0, ran.stderr
    first = ran.stdout.strip()
    wait_settled(database_url, first)
    assert server.cli("job", "logs", first, check=True).stdout == "report for eu\n***\n"
    spec = json.loads(server.cli("job", "get", first, "-o", "json", check=True).stdout)["spec"]
    assert (spec["name"], spec["timeout_seconds"], spec["resources"]["memory_bytes"]) == ("nightly report", 600, 2**28)
    assert (spec["env"], spec["labels"], spec["secret_names"]) == ({"REGION": "eu"}, {"team": "data"}, ["TOKEN"])

    printed = tmp_path / "again.json"
    printed.write_text(json.dumps(spec))
    again = server.cli("job", "run", "--file", str(printed), "--secret", "TOKEN=an0ther", "--wait", check=True)
    second = again.stdout.strip()
    wait_settled(database_url, second)
    assert json.loads(server.cli("job", "get", second, "-o", "json", check=True).stdout)["spec"] == spec
    assert server.cli("job", "logs", second, check=True).stdout == "report for eu\n***\n"

    before = query(database_url, "SELECT count(*) FROM jobs")
    for flags, said in (
        ((), "names the secret TOKEN: give the values with --secret"),
        (("--secret", "TOKEN=x1234", "--timeout", "30"), "--file gives the job's spec: --timeout would change it"),
    ):
        refused = server.cli("job", "run", "--file", str(written), *flags)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    assert query(database_url, "SELECT count(*) FROM jobs") == before


def test_input_files_are_in_the_working_directory_before_the_command_runs(
    server: ServerProcess, database_url: str, tmp_path: Path
) -> None:
    """`job run --input src --input data.csv` (Ray's --working-dir, Argo's input artifacts):
    packed, uploaded, unpacked by the worker as the job's user; a `job retry` has them too."""
    (tmp_path / "src/lib").mkdir(parents=True)
    (tmp_path / "src/main.sh").write_text('echo "main, $(cat lib/words.txt) and $(cat ../data.csv)"\n')
    (tmp_path / "src/lib/words.txt").write_text("words")
    (tmp_path / "data.csv").write_text("a,b")
    command = "cd src && sh main.sh && id -un && stat -c %U lib/words.txt"
    ran = server.cli(
        "job", "run", "-p", "local", "-c", command, "--input", f"{tmp_path}/src", "--input", f"{tmp_path}/data.csv",
        "--follow",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "main, words and a,b\nnobody\nnobody\n"
    assert "[hodei] uploaded 3 files for the job's working directory (" in ran.stderr
    assert "[hodei] unpacked 3 input files, 65 bytes\n" in ran.stderr  # 57 + 5 + 3
    job_id = ran.stderr.split("Job ID: ")[1].split()[0]
    shown = server.cli("job", "get", job_id, check=True).stdout
    assert re.search(r"\nInput: [\d.]+ (bytes|KiB) archive, sha256 [0-9a-f]{12}… \(--input\)\n", shown), shown
    wait_settled(database_url, job_id)
    again = server.cli("job", "retry", job_id, "--wait", check=True).stdout.strip()
    assert server.cli("job", "logs", again, check=True).stdout == ran.stdout
    # The same files again (a job run again): the server keeps them, they are not sent again.
    rerun = server.cli(
        "job", "run", "-p", "local", "-c", command, "--input", f"{tmp_path}/src", "--input", f"{tmp_path}/data.csv",
        "--follow",
    )  # fmt: skip
    assert (rerun.returncode, rerun.stdout) == (0, ran.stdout), rerun.stderr
    assert "[hodei] 3 files for the job's working directory (" in rerun.stderr
    assert "): uploaded before, not sent again" in rerun.stderr and "[hodei] uploaded" not in rerun.stderr
    # An array's jobs each have them (one upload, a copy each).
    array = server.cli(
        "job", "run", "-p", "local", "-c", "cat data.csv; echo $HODEI_ARRAY_INDEX", "--input", f"{tmp_path}/data.csv",
        "--array", "0-1", "--wait",
    )  # fmt: skip
    assert array.returncode == 0, array.stderr
    logs = [server.cli("job", "logs", each, check=True).stdout for each in array.stdout.split()]
    assert logs == ["a,b0\n", "a,b1\n"]  # data.csv has no newline of its own

    # Refused, nothing written: a path that is not there, files named for another job in a
    # --file, an archive never uploaded (the API), a cron job given files.
    before = query(database_url, "SELECT count(*) FROM jobs")
    missing = server.cli("job", "run", "-p", "local", "-c", "true", "--input", f"{tmp_path}/nothing")
    assert missing.returncode == 2 and f"--input '{tmp_path}/nothing': No such file or directory" in missing.stderr
    spec = json.loads(server.cli("-o", "json", "job", "get", job_id, check=True).stdout)["spec"]
    (tmp_path / "job.json").write_text(json.dumps(spec))
    filed = server.cli("job", "run", "--file", str(tmp_path / "job.json"))
    assert (
        filed.returncode == 2
        and "input_sha256 names files uploaded for one job: give them with --input" in filed.stderr
    )
    unknown = common_pb2.JobSpec(
        command="true", timeout_seconds=30, provider="local", input_sha256="0" * 64, input_bytes=10
    )
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as refused:
            jobs_pb2_grpc.JobExecutionServiceStub(channel).QueueJob(jobs_pb2.QueueJobRequest(spec=unknown), timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no input archive 000000000000… was uploaded by anonymous in the last hour" in str(
            refused.value.details()
        )
        cron = cron_pb2.CreateCronJobRequest(name="with-input", schedule="@daily", spec=unknown)
        with pytest.raises(grpc.RpcError) as refused:
            cron_pb2_grpc.CronServiceStub(channel).CreateCronJob(cron, timeout=30)
        assert "a cron job's runs cannot take --input files" in str(refused.value.details())
    assert query(database_url, "SELECT count(*) FROM jobs") == before


def test_an_upload_past_its_limit_or_unlike_what_it_said_is_refused_and_leaves_nothing(
    server: ServerProcess, database_url: str, tmp_path: Path
) -> None:
    before = query(database_url, "SELECT count(*) FROM jobs")
    (tmp_path / "big.bin").write_bytes(os.urandom(1_500_000))
    refused = server.cli("job", "run", "-p", "local", "-c", "true", "--input", str(tmp_path / "big.bin"))
    assert refused.returncode == 2
    assert "it must be 1 to 1000000 bytes (HODEI_MAX_INPUT_BYTES)" in refused.stderr, refused.stderr
    assert query(database_url, "SELECT count(*) FROM jobs") == before

    def upload(size: int, data: bytes) -> grpc.RpcError:
        pieces = [artifacts_pb2.InputPiece(size_bytes=size), artifacts_pb2.InputPiece(data=data)]
        with server.channel() as channel, pytest.raises(grpc.RpcError) as failed:
            artifacts_pb2_grpc.ArtifactServiceStub(channel).UploadInput(iter(pieces), timeout=30)
        return failed.value

    more = upload(10, b"x" * 20)
    assert more.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the input archive is more than the 10 bytes its upload said" in str(more.details())
    less = upload(20, b"x" * 10)
    assert "the input archive was 10 bytes, not the 20 its upload said" in str(less.details())
    uploads = server.log_dir / "artifacts" / "uploads"
    assert [path for path in uploads.iterdir() if path.is_dir()], "the submitter's uploads directory"
    assert [path.name for path in uploads.rglob("*.part")] == []


def test_a_dry_run_is_checked_by_the_server_submits_nothing_and_prints_a_file_to_submit(
    server: ServerProcess, database_url: str, tmp_path: Path
) -> None:
    """`job run --dry-run` (kubectl's --dry-run=server, AIP-163's validate_only): what the
    server would refuse is refused, nothing is written, and the spec it prints is a file
    `job run --file` takes."""
    before = query(database_url, "SELECT count(*) FROM jobs")
    flags = ("-p", "local", "-c", "echo $GREETING", "-e", "GREETING=hi", "-l", "team=data", "--retry", "1")
    checked = server.cli("job", "run", *flags, "--dry-run")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == (
        "command: echo $GREETING\nenv:\n  GREETING: hi\ntimeout_seconds: 600.0\n"
        "provider: local\nlabels:\n  team: data\nmax_attempts: 1\nretries: 1\n"
    )
    assert "[hodei] a job the server would take: nothing submitted (--dry-run)" in checked.stderr
    array = json.loads(server.cli("-o", "json", "job", "run", *flags, "--array", "0-2", "--dry-run", check=True).stdout)
    assert (array["jobs"], array["spec"]["env"], array["spec"]["pool"]) == (3, {"GREETING": "hi"}, "")
    # What only the server knows: a pool that does not exist.
    refused = server.cli("job", "run", *flags, "--pool", "nowhere", "--dry-run")
    assert refused.returncode == 2 and "no pool 'nowhere': an operator creates it" in refused.stderr
    waited = server.cli("job", "run", *flags, "--dry-run", "--wait")
    assert waited.returncode == 2 and "--dry-run submits nothing: there is nothing to wait for" in waited.stderr
    assert query(database_url, "SELECT count(*) FROM jobs") == before
    # The printed spec, kept as a file, submits the job.
    (tmp_path / "job.yaml").write_text(checked.stdout)
    ran = server.cli("job", "run", "--file", str(tmp_path / "job.yaml"), "--follow")
    assert (ran.returncode, ran.stdout) == (0, "hi\n"), ran.stderr


def test_several_jobs_logs_come_each_line_after_its_jobs_name(server: ServerProcess, database_url: str) -> None:
    """`job logs -l hodei.io/array=ID` (`kubectl logs -l --prefix`, stern): an array's output
    together, one job after another, or with --follow as they print, whole lines each."""
    command = (
        'echo "start $HODEI_ARRAY_INDEX"; printf "part-"; sleep 0.$HODEI_ARRAY_INDEX; echo "end $HODEI_ARRAY_INDEX"'
    )
    ran = server.cli("job", "run", "-p", "local", "-n", "piece", "-c", command, "--array", "1-3")
    array_id = ran.stdout.split()[0]
    selector = f"hodei.io/array={array_id}"
    followed = server.cli("job", "logs", "-l", selector, "--follow", timeout=120)
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    for index in (1, 2, 3):  # whole lines: a job's `part-` is never cut by another job's line
        mine = [line for line in lines if line.startswith(f"[piece[{index}]] ")]
        assert mine == [f"[piece[{index}]] start {index}", f"[piece[{index}]] part-end {index}"], lines
    assert len(lines) == 6
    # Ended: one job after another, the oldest first; ids name them the same way.
    after = server.cli("job", "logs", "-l", selector, check=True).stdout
    assert after.splitlines() == [f"[piece[{i}]] {text} {i}" for i in (1, 2, 3) for text in ("start", "part-end")]
    ids = ran.stdout.split()
    assert server.cli("job", "logs", ids[2], ids[0], check=True).stdout.splitlines() == [
        "[piece[3]] start 3",
        "[piece[3]] part-end 3",
        "[piece[1]] start 1",
        "[piece[1]] part-end 1",
    ]
    entries = [
        json.loads(line)
        for line in server.cli("-o", "json", "job", "logs", "-l", selector, check=True).stdout.splitlines()
    ]
    assert sorted({entry["job_id"] for entry in entries}) == sorted(ids) and len(entries) == 6
    none = server.cli("job", "logs", "-l", "hodei.io/array=nothing")
    assert (none.returncode, none.stdout) == (0, "") and "no job matches the selection: no output" in none.stderr


def test_a_profile_of_the_config_file_names_the_installation_to_call(server: ServerProcess, tmp_path: Path) -> None:
    """`--profile NAME` (anywhere on the line, as the other settings), $HODEI_PROFILE, or the
    file's `profile`: one file for several installations, as kubectl's contexts."""
    config = tmp_path / "config.toml"
    config.write_text(f'profile = "nowhere"\n[profiles.here]\nserver = "{server.address}"\n'
                      '[profiles.nowhere]\nserver = "127.0.0.1:1"\n')  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "HODEI_CONFIG": str(config)}
    env.pop("HODEI_SERVER", None)

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "hodei-jobs-cli"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**env, **extra})

    listed = cli("job", "list", "--profile", "here")
    assert listed.returncode == 0, listed.stderr
    me = cli("whoami", HODEI_PROFILE="here")
    assert (me.returncode, me.stdout) == (0, "anonymous: the server runs without authentication\n")
    assert me.stderr == f"at {server.address} (profile here)\n"  # which installation answered
    unreachable = cli("whoami")  # the file's default: nothing listens on port 1
    assert unreachable.returncode == 1 and "127.0.0.1:1" in unreachable.stderr
    unknown = cli("--profile", "prod", "whoami")
    assert unknown.returncode == 2
    assert f"no profile `prod` in {config} (its profiles: here, nowhere;" in unknown.stderr
