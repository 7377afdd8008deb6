"""Several jobs from one file, submitted together (all or none), each starting after those
of them its `after` names by name: a build, its tests, a deploy, a report on failure, a
clean-up however they ended (hodei.domain.workflow)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.domain.workflow import WORKFLOW_LABEL
from hodei.testing import ServerProcess, query, wait_settled

pytestmark = pytest.mark.e2e

PIPELINE = """\
name: build
command: make
provider: sim
env: {HODEI_SIM_SECONDS: "0.5", HODEI_SIM_EXIT_CODE: "%(build)s"}
---
name: test
command: make test
provider: sim
after: {build: ok}
---
name: deploy
command: make deploy
provider: sim
after: {test: ok}
secret_names: [TOKEN]
---
name: report
command: make report
provider: sim
after: {build: notok}
---
name: cleanup
command: make clean
provider: sim
after: {build: any, test: any}
"""


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process


def pipeline(tmp_path: Path, build: int = 0, text: str = PIPELINE) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text % {"build": build})
    return str(path)


def jobs(server: ServerProcess, workflow_id: str) -> dict[str, tuple[str, str, Any, Any, Any]]:
    """The workflow's jobs by name: id, state, started_at, completed_at, the spec's after."""
    rows = query(
        server.database_url,
        "SELECT name, id::text, state, started_at, completed_at, spec -> 'after' FROM jobs "
        "WHERE spec -> 'labels' ->> %s = %s",
        (WORKFLOW_LABEL, workflow_id),
    )
    return {name: (job_id, state, started, completed, after) for name, job_id, state, started, completed, after in rows}


def test_the_jobs_of_a_file_run_each_after_those_it_names_and_a_failure_cancels_only_those_needing_success(
    server: ServerProcess, tmp_path: Path
) -> None:
    file = pipeline(tmp_path)
    done = server.cli("job", "run", "--file", file, "--secret", "TOKEN=t0ken", "--wait")
    # `report` never started (cancelled: build did not fail), a branch not taken: not a failure.
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    assert (
        f"Job {printed[3]} CANCELLED (Status Code: 6): job {printed[0]} ended SUCCEEDED, and this job was to start "
        "once it has failed (--after): skipped" in done.stderr
    )
    assert len(printed) == 5
    workflow_id = printed[0]  # the first job of the file comes first in the request too
    found = jobs(server, workflow_id)
    assert [found[name][0] for name in ("build", "test", "deploy", "report", "cleanup")] == printed
    assert {name: job[1] for name, job in found.items()} == {
        "build": "SUCCEEDED",
        "test": "SUCCEEDED",
        "deploy": "SUCCEEDED",
        "report": "CANCELLED",
        "cleanup": "SUCCEEDED",
    }
    for later, earlier in (("test", "build"), ("deploy", "test"), ("cleanup", "test"), ("cleanup", "build")):
        assert found[later][2] >= found[earlier][3], (later, earlier)
    assert found["test"][4] == {found["build"][0]: "ok"}
    assert found["cleanup"][4] == {found["build"][0]: "any", found["test"][0]: "any"}
    assert f"5 jobs submitted together: build {workflow_id[:8]}" in done.stderr
    shown = server.cli("job", "get", found["deploy"][0], check=True).stdout
    assert "Secrets: TOKEN" in shown and f"After: {found['test'][0]} once it has succeeded" in shown
    assert f"Pipeline: {workflow_id} (`job workflow {workflow_id[:8]}`)" in shown
    assert "Secrets: -" in server.cli("job", "get", found["build"][0], check=True).stdout
    listed = json.loads(server.cli("job", "list", "-l", f"{WORKFLOW_LABEL}={workflow_id}", "-o", "json").stdout)
    assert sorted(job["id"] for job in listed["jobs"]) == sorted(printed)

    # Watched together they end as the run did (by ids, or by their label); `report` alone, its
    # cancel is its own ending.
    assert server.cli("job", "watch", *printed).returncode == 0
    selected = server.cli("job", "watch", "-l", f"{WORKFLOW_LABEL}={workflow_id}")
    assert selected.returncode == 0 and selected.stdout.splitlines()[0].startswith(f"{printed[0]} SUCCEEDED")
    assert len(selected.stdout.splitlines()) == 5, selected.stdout
    assert server.cli("job", "watch", printed[3]).returncode == 130
    none = server.cli("job", "watch", "-l", f"{WORKFLOW_LABEL}=no-such-pipeline")
    assert none.returncode == 0 and "no job matches the selection: nothing to watch" in none.stderr
    both = server.cli("job", "watch", printed[0], "-l", f"{WORKFLOW_LABEL}={workflow_id}")
    assert both.returncode == 2 and "give job ids or a selection" in both.stderr, both.stderr

    waited = server.cli("job", "run", "--file", pipeline(tmp_path, build=3), "--secret", "TOKEN=t0ken", "--wait")
    assert waited.returncode == 3, waited.stderr  # the build's code; test and deploy skipped
    assert waited.stderr.count("(--after): skipped") == 2, waited.stderr
    watched = server.cli("job", "watch", "-l", f"{WORKFLOW_LABEL}={waited.stdout.split()[0]}")
    assert watched.returncode == 3, watched.stdout
    failed = server.cli("job", "run", "--file", pipeline(tmp_path, build=3), "--secret", "TOKEN=t0ken", "-o", "json")
    assert failed.returncode == 0, failed.stderr
    answer = json.loads(failed.stdout)
    assert answer["names"] == ["build", "test", "deploy", "report", "cleanup"] and not answer["already_submitted"]
    for job_id in answer["job_ids"]:
        wait_settled(server.database_url, job_id)
    states = {name: job[1] for name, job in jobs(server, answer["workflow_id"]).items()}
    assert states == {
        "build": "FAILED",
        "test": "CANCELLED",
        "deploy": "CANCELLED",
        "report": "SUCCEEDED",
        "cleanup": "SUCCEEDED",
    }


def test_a_pipeline_is_shown_by_stage_with_what_each_starts_after_and_the_pipelines_state(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`job workflow ID` (Argo's `argo get`), named by any job of it: its jobs by stage, a
    branch not taken said skipped, and the pipeline's state as a cron job's run's."""
    held = server.cli(
        "job", "run", "--file", pipeline(tmp_path, build=3), "--secret", "TOKEN=t0ken", "--hold", check=True
    )
    ids = held.stdout.split()
    waiting = server.cli("job", "workflow", ids[2], check=True)
    assert waiting.stdout.splitlines()[0] == f"Pipeline {ids[0]}: PENDING, 5 jobs, submitted by anonymous"
    assert waiting.stdout.count("PENDING (held)") == 5, waiting.stdout
    server.cli("job", "release", "-l", f"{WORKFLOW_LABEL}={ids[0]}", check=True)
    for job_id in ids:
        wait_settled(server.database_url, job_id)

    shown = server.cli("job", "workflow", ids[4], check=True)
    rows = [line.split("\t") for line in shown.stdout.splitlines()[1:]]
    head = f"Pipeline {ids[0]}: FAILED, 5 jobs, submitted by anonymous; "
    assert re.fullmatch(
        re.escape(head) + r"\S+ m?s from its first submission to its last end", shown.stdout.splitlines()[0]
    )
    assert rows[0] == ["STAGE", "NAME", "STATE", "EXIT", "RAN", "TRIES", "AFTER", "ID"]
    assert [(row[0], row[1], row[2], row[3], row[5], row[6], row[7]) for row in rows[1:]] == [
        ("1", "build", "FAILED", "3", "1", "-", ids[0]),
        ("2", "test", "CANCELLED (skipped)", "-", "1", "build:ok", ids[1]),
        ("2", "report", "SUCCEEDED", "0", "1", "build:notok", ids[3]),
        ("3", "deploy", "CANCELLED (skipped)", "-", "1", "test:ok", ids[2]),
        ("3", "cleanup", "SUCCEEDED", "0", "1", "build:any, test:any", ids[4]),
    ]
    assert rows[1][4] != "-" and rows[2][4] == "-"  # build ran; test never started
    assert f"`hodei-jobs-cli job retry --workflow {ids[0]}` runs again the 3 jobs that did not succeed" in shown.stderr

    answer = json.loads(server.cli("job", "workflow", ids[1], "-o", "json", check=True).stdout)
    assert (answer["id"], answer["state"]) == (ids[0], "FAILED")
    assert [(job["stage"], job["skipped"], job["copy_of"], job["job"]["id"]) for job in answer["jobs"]] == [
        (1, False, [], ids[0]),
        (2, True, [], ids[1]),
        (2, False, [], ids[3]),
        (3, True, [], ids[2]),
        (3, False, [], ids[4]),
    ]
    assert answer["jobs"][0]["job"]["exit_code"] == 3 and answer["jobs"][1]["job"]["exit_code"] is None

    # A person's cancel is not a branch not taken: the pipeline is CANCELLED, not SUCCEEDED.
    ok = server.cli("job", "run", "--file", pipeline(tmp_path), "--secret", "TOKEN=t0ken", "--hold", check=True)
    later = ok.stdout.split()
    server.cli("job", "cancel", later[3], check=True)  # report, which would have been skipped
    server.cli("job", "release", *(later[place] for place in (0, 1, 2, 4)), check=True)
    for job_id in later:
        wait_settled(server.database_url, job_id)
    assert server.cli("job", "workflow", later[0], check=True).stdout.startswith(f"Pipeline {later[0]}: CANCELLED")

    lone = server.cli("job", "run", "-p", "sim", "-c", "true", check=True).stdout.strip()
    refused = server.cli("job", "workflow", lone)
    assert refused.returncode == 2 and f"job {lone} is not one of a pipeline" in refused.stderr, refused.stderr
    unknown = server.cli("job", "workflow", "0" * 8)
    assert unknown.returncode != 0 and "no job id starts with 00000000" in unknown.stderr, unknown.stderr


def test_a_job_cancelled_by_someone_is_not_skipped_and_keeps_its_code(server: ServerProcess, tmp_path: Path) -> None:
    """Only the platform's cancel of a job whose `after` can no longer hold is a skip: the
    job it waited for, cancelled by a person, still ends the wait with 130."""
    file = tmp_path / "two.yaml"
    file.write_text(
        "name: build\ncommand: make\nprovider: sim\nenv: {HODEI_SIM_SECONDS: '600'}\n---\n"
        "name: test\ncommand: make test\nprovider: sim\nafter: {build: ok}\n"
    )
    build, test = server.cli("job", "run", "--file", str(file), check=True).stdout.split()
    server.cli("job", "cancel", build, check=True)
    wait_settled(server.database_url, test)
    assert server.cli("job", "watch", build, test).returncode == 130  # build's own
    shown = server.cli("job", "get", test, check=True).stdout
    assert "CANCELLED" in shown and "Cancelled by: system" in shown, shown


def test_a_file_is_submitted_all_or_none_and_once_for_a_key(server: ServerProcess, tmp_path: Path) -> None:
    before = query(server.database_url, "SELECT count(*) FROM jobs")
    refused = server.cli(
        "job", "run", "--file", pipeline(tmp_path, text=PIPELINE + "pool: nosuch\n"), "--secret", "TOKEN=t0ken"
    )
    assert refused.returncode == 2, refused.stderr
    assert "job 5 of the request (cleanup): no pool 'nosuch'" in refused.stderr, refused.stderr
    assert query(server.database_url, "SELECT count(*) FROM jobs") == before  # its first four jobs neither

    file = pipeline(tmp_path, build=0, text=PIPELINE.replace("make clean", "sleep-less clean"))
    first = server.cli("job", "run", "--file", file, "--secret", "TOKEN=t0ken", "--idempotency-key", "wf-1", "--hold")
    again = server.cli("job", "run", "--file", file, "--secret", "TOKEN=t0ken", "--idempotency-key", "wf-1", "--hold")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout
    assert "idempotency key wf-1 submitted job" in again.stderr and "nothing new submitted" in again.stderr
    other = server.cli(
        "job", "run", "--file", file, "--secret", "TOKEN=0ther-t0ken", "--idempotency-key", "wf-1", "--hold"
    )
    assert other.returncode == 2 and "another request" in other.stderr, other.stderr
    workflow_id = first.stdout.split()[0]
    assert {job[1] for job in jobs(server, workflow_id).values()} == {"PENDING"}  # held, every one
    server.cli("job", "release", "-l", f"{WORKFLOW_LABEL}={workflow_id}", check=True)
    for job_id in first.stdout.split():
        wait_settled(server.database_url, job_id)
    assert {name: job[1] for name, job in jobs(server, workflow_id).items()}["deploy"] == "SUCCEEDED"


def test_the_api_refuses_a_job_named_before_its_place_and_what_is_one_jobs(server: ServerProcess) -> None:
    def part(name: str, after: dict[str, str] | None = None, **fields: object) -> jobs_pb2.QueueJobRequest:
        spec = common_pb2.JobSpec(name=name, command="x", timeout_seconds=60, provider="sim", after=after or {})
        return jobs_pb2.QueueJobRequest(spec=spec, **fields)  # type: ignore[arg-type]

    before = query(server.database_url, "SELECT count(*) FROM jobs")
    with server.channel() as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        for request, words in (
            (jobs_pb2.QueueJobsRequest(), "give 1 to 100 jobs to submit together, got 0"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a")] * 101), "give 1 to 100 jobs"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a", {"#0": "ok"})]), "the first job cannot start after another"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a"), part("b", {"#1": "ok"})]), "#0 to #0"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a"), part("b", {"#x": "ok"})]), "named by its place"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a"), part("b", {"#0": "soon"})]), "must be one of ok, notok, any"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a", array=[0, 1])]), "one job (no array)"),
            (jobs_pb2.QueueJobsRequest(jobs=[part("a", idempotency_key="k")]), "the whole request's"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.QueueJobs(request, timeout=30)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert words in (refused.value.details() or ""), refused.value.details()
        checked = stub.QueueJobs(
            jobs_pb2.QueueJobsRequest(jobs=[part("a"), part("b", {"#0": "ok"})], validate_only=True), timeout=30
        )
        assert list(checked.job_ids) == []
        assert query(server.database_url, "SELECT count(*) FROM jobs") == before
        made = stub.QueueJobs(jobs_pb2.QueueJobsRequest(jobs=[part("a"), part("b", {"#0": "ok"})]), timeout=30)
    a, b = made.job_ids
    rows = dict(
        query(server.database_url, "SELECT id::text, spec -> 'after' FROM jobs WHERE id = ANY(%s::uuid[])", ([a, b],))
    )
    assert rows == {a: {}, b: {a: "ok"}}
    for job_id in (a, b):
        wait_settled(server.database_url, job_id)


RETRIED = """\
name: build
provider: local
command: n=$(( $(cat %(count)s 2>/dev/null || echo 0) + 1 )); echo $n > %(count)s; [ $n -ge 2 ] || exit 3
---
name: test
provider: local
command: echo tested
after: {build: ok}
---
name: report
provider: local
command: echo build failed
after: {build: notok}
"""


def test_a_pipelines_jobs_that_did_not_succeed_are_retried_together(
    fresh_database_url: str, tmp_path: Path, shared_dir: Path
) -> None:
    """`job retry --workflow ID` (Argo's `argo retry`, GitLab's pipeline retry): the jobs of
    the pipeline that failed or were skipped run again, together, each copy after the copies
    of those it started after (a skipped job alone could never start: its build failed);
    a job that succeeded is not run again, nor one already retried."""
    env = {"HODEI_LOCAL_ENABLED": "1"}
    (tmp_path / "pipeline.yaml").write_text(RETRIED % {"count": shared_dir / "builds"})
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        first = server.cli("job", "run", "--file", str(tmp_path / "pipeline.yaml"), "--wait")
        assert first.returncode == 3 and "(--after): skipped" in first.stderr, first.stderr
        build, test, report = first.stdout.split()
        alone = server.cli("job", "retry", test)
        assert alone.returncode == 2 and f"job {build} ended FAILED" in alone.stderr, alone.stderr
        assert f"`job retry --workflow {build}` retries it with the jobs of its pipeline" in alone.stderr

        retried = server.cli("job", "retry", "--workflow", report, "--idempotency-key", "retry-1", "--wait")
        assert retried.returncode == 0, retried.stderr
        build_copy, test_copy = retried.stdout.split()
        assert f"2 jobs retried together: build {build_copy[:8]}, test {test_copy[:8]}" in retried.stderr
        # The same key again answers those copies, though the pipeline now stands by them.
        repeated = server.cli("job", "retry", "--workflow", build, "--idempotency-key", "retry-1", "-o", "json")
        assert json.loads(repeated.stdout) == {
            "job_ids": [build_copy, test_copy],
            "retry_of": [build, test],
            "already_submitted": True,
        }, repeated.stderr
        rows = query(
            fresh_database_url,
            "SELECT id::text, state, retry_of::text, spec -> 'after', spec -> 'labels' ->> %s FROM jobs"
            " WHERE id = ANY(%s::uuid[]) ORDER BY created_at",
            (WORKFLOW_LABEL, [build_copy, test_copy]),
        )
        assert rows == [
            (build_copy, "SUCCEEDED", build, {}, build),
            (test_copy, "SUCCEEDED", test, {build_copy: "ok"}, build),
        ]
        assert "echo tested" in server.cli("job", "get", test_copy, check=True).stdout
        # The pipeline now stands by the copies: each in its place, its try counted.
        shown = json.loads(server.cli("job", "workflow", report, "-o", "json", check=True).stdout)
        assert shown["state"] == "SUCCEEDED"
        assert [(job["stage"], job["job"]["id"], job["copy_of"]) for job in shown["jobs"]] == [
            (1, build_copy, [build]),
            (2, test_copy, [test]),
            (2, report, []),
        ]
        two = server.cli("job", "retry", "--workflow", build, test)
        assert two.returncode == 2 and "--workflow retries the pipeline of one job" in two.stderr, two.stderr
        again = server.cli("job", "retry", "--workflow", build, "--wait")
        assert again.returncode == 0 and "nothing to retry" in again.stderr and again.stdout == "", again.stderr

        lone = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True).stdout.strip()
        refused = server.cli("job", "retry", "--workflow", lone)
        assert refused.returncode == 2 and "is not one of a pipeline" in refused.stderr, refused.stderr
        for job_id in (build_copy, test_copy):
            wait_settled(fresh_database_url, job_id)
