"""Cron jobs end to end: `hodei-jobs-cli cron …` against a real server with tokens, its
jobs run by local workers, and a server killed with SIGKILL in between."""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from e2e.test_access import create_token
from hodei._proto import common_pb2, cron_pb2, cron_pb2_grpc
from hodei.domain.cron import CRON_LABEL
from hodei.domain.job import TERMINAL_STATES
from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e

SECRET = "cron-secret-value"


@pytest.fixture(scope="module")
def tokens(database_url: str) -> dict[str, str]:
    return {
        "alice": create_token(database_url, "alice", "submit"),
        "bob": create_token(database_url, "bob", "submit"),
        "ops": create_token(database_url, "ops", "operate"),
        "reader": create_token(database_url, "reader", "read"),
    }


@pytest.fixture(scope="module")
def server(
    database_url: str, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("cron"), {"HODEI_SIM_ENABLED": "1"}) as process:
        yield process
    print(process.logs()[-5000:])


def cli(server: ServerProcess, token: str, *args: str, check: bool = True) -> Any:
    return server.cli("--token", token, *args, check=check)


def jobs_of(server: ServerProcess, name: str) -> list[tuple[str, str, str]]:
    """(id, state, actor) of the cron job's jobs, oldest first."""
    rows = query(
        server.database_url,
        "SELECT id::text, state, actor FROM jobs WHERE spec -> 'labels' ->> %s = %s ORDER BY created_at",
        (CRON_LABEL, name),
    )
    return [(row[0], row[1], row[2]) for row in rows]


def test_a_cron_job_submits_its_job_at_every_time_until_paused_or_deleted(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    alice, bob, ops = tokens["alice"], tokens["bob"], tokens["ops"]
    shown = cli(
        server,
        alice,
        *("cron", "create", "ticker", "--schedule", "@every 2s", "--provider", "local"),
        *("--command", 'echo "slot=$HODEI_CRON_TIME secret=${#TOKEN}"', "--secret", f"TOKEN={SECRET}"),
    ).stdout
    assert "Schedule: @every 2s - every 2s" in shown and "Owner: alice" in shown

    def two_done() -> list[tuple[str, str, str]] | None:
        done = [job for job in jobs_of(server, "ticker") if job[1] == "SUCCEEDED"]
        return done if len(done) >= 2 else None

    done = eventually(two_done, timeout=60, what="two jobs of the cron job succeed")
    assert {job[2] for job in done} == {"alice"}
    first_log = cli(server, alice, "job", "logs", done[0][0]).stdout
    slot = query(
        server.database_url, "SELECT spec -> 'env' ->> 'HODEI_CRON_TIME' FROM jobs WHERE id = %s", (done[0][0],)
    )[0][0]
    assert first_log.strip() == f"slot={slot} secret={len(SECRET)}"
    assert int(slot[17:19]) % 2 == 0  # every 2 s since the epoch: an even second
    shown = cli(server, alice, "job", "get", done[0][0]).stdout
    assert f"Cron job: ticker, its run of {slot} (`cron get ticker`)" in shown
    events = query(
        server.database_url, "SELECT count(*) FROM domain_events WHERE payload::text LIKE %s", (f"%{SECRET}%",)
    )
    assert events == [(0,)]

    listed = json.loads(cli(server, tokens["reader"], "cron", "list", "-o", "json").stdout)["cron_jobs"]
    assert [(c["name"], c["owner"], c["paused"], len(c["next_times"])) for c in listed] == [
        ("ticker", "alice", False, 3)
    ]
    assert listed[0]["last_job_id"] in {job[0] for job in jobs_of(server, "ticker")}

    refused = cli(server, bob, "cron", "pause", "ticker", check=False)
    assert refused.returncode == 2
    assert "token `bob` may pause only its own cron jobs; ticker was defined by alice" in refused.stderr
    replaced = cli(
        server, bob, "cron", "create", "ticker", "--schedule", "@daily", "-c", "true", "--replace", check=False
    )
    assert replaced.returncode == 2 and "may redefine only its own cron jobs" in replaced.stderr
    again = cli(server, alice, "cron", "create", "ticker", "--schedule", "@daily", "-c", "true", check=False)
    assert again.returncode == 2 and "cron job ticker exists" in again.stderr

    assert "State: paused" in cli(server, alice, "cron", "pause", "ticker").stdout
    for job_id, _, _ in jobs_of(server, "ticker"):
        wait_settled(server.database_url, job_id, 60)
    time.sleep(1.5)  # a round that read the cron job before its pause may still be writing
    before = len(jobs_of(server, "ticker"))
    time.sleep(5)  # two slots and more
    assert len(jobs_of(server, "ticker")) == before
    shown = cli(server, alice, "cron", "get", "ticker").stdout
    assert "Next: -" in shown and "Its jobs: job list -l hodei.io/cron=ticker" in shown

    # The operate role runs anyone's cron job now, whatever its schedule and state.
    manual = cli(server, ops, "cron", "run", "ticker", "--wait").stdout.split()[0]  # exit 0: it succeeded
    wait_settled(server.database_url, manual, 60)
    assert query(server.database_url, "SELECT state, actor FROM jobs WHERE id = %s", (manual,)) == [
        ("SUCCEEDED", "ops")
    ]

    deleted = cli(server, alice, "cron", "delete", "ticker")
    assert "cron job ticker deleted; its jobs stay" in deleted.stderr
    gone = cli(server, alice, "cron", "get", "ticker", check=False)
    assert gone.returncode == 2 and "cron job 'ticker' not found" in gone.stderr
    assert len(jobs_of(server, "ticker")) == before + 1
    assert json.loads(cli(server, alice, "cron", "list", "-o", "json").stdout) == {"cron_jobs": []}


def test_a_cron_job_outlives_a_kill_9_of_its_server_and_forbid_keeps_one_job_at_a_time(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Nothing of a cron job is in a server's memory: the next server starts the next
    slots. With --concurrency forbid, slots are skipped while a job of it runs."""
    alice = tokens["alice"]
    cli(
        server,
        alice,
        *("cron", "create", "slow", "--schedule", "@every 1s", "--concurrency", "forbid", "--provider", "local"),
        *("--command", "sleep 3"),
    )
    eventually(lambda: jobs_of(server, "slow") or None, timeout=30, what="the first job of the cron job")
    server.stop(signal.SIGKILL)
    server.start()
    eventually(
        lambda: len([job for job in jobs_of(server, "slow") if job[1] == "SUCCEEDED"]) >= 2 or None,
        timeout=90,
        what="two jobs of the cron job succeed across the restart",
    )
    cli(server, alice, "cron", "delete", "slow")
    rows = query(
        server.database_url,
        "SELECT started_at, completed_at FROM jobs WHERE spec -> 'labels' ->> %s = 'slow' "
        "AND started_at IS NOT NULL ORDER BY started_at",
        (CRON_LABEL,),
    )
    # Each job ran alone: the next one started after the one before it ended (or never ran).
    for (_, ended), (started, _) in itertools.pairwise(rows):
        assert ended is not None and started >= ended


def test_replace_cancels_the_running_job_of_the_time_before(server: ServerProcess, tokens: dict[str, str]) -> None:
    """Kubernetes' Replace on real workers: each time's job cancels the one before it."""
    alice = tokens["alice"]
    cli(
        server,
        alice,
        *("cron", "create", "newest", "--schedule", "@every 2s", "--concurrency", "replace", "--provider", "local"),
        *("--command", "sleep 60"),
    )

    def replaced_twice() -> list[tuple[str, str, str]] | None:
        jobs = jobs_of(server, "newest")
        return jobs if sum(1 for job in jobs if job[1] == "CANCELLED") >= 2 else None

    eventually(replaced_twice, timeout=60, what="two jobs of the cron job replaced")
    cli(server, alice, "cron", "delete", "newest")
    jobs = jobs_of(server, "newest")
    for job_id, _, _ in jobs[:-1]:
        wait_settled(server.database_url, job_id, 60)
    rows = query(
        server.database_url,
        "SELECT state, cancelled_by, error_message FROM jobs WHERE id = ANY(%s::uuid[]) ORDER BY created_at",
        ([job[0] for job in jobs[:-1]],),
    )
    assert {(state, by) for state, by, _ in rows} == {("CANCELLED", "system")}
    assert all(message.startswith("replaced by the run of cron job newest at ") for _, _, message in rows)
    time.sleep(1.5)  # a sweep that read the cron job before its deletion may still be writing
    for job_id, state, _ in jobs_of(server, "newest"):
        if state not in TERMINAL_STATES:
            cli(server, alice, "job", "cancel", job_id, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nightly", "--schedule", "0 3 * *", "-c", "true"], "give five fields"),
        (["nightly", "--schedule", "0 25 * * *", "-c", "true"], "Bad hour"),
        (["nightly", "--schedule", "0 3 * * *", "--tz", "Europe/Atlantis", "-c", "true"], "is not known"),
        (["nightly", "--schedule", "@every 0s", "-c", "true"], "@every takes"),
        (["night ly", "--schedule", "@daily", "-c", "true"], "a cron job's name is 1 to 63"),
        (["nightly", "--schedule", "@daily", "-c", ""], "command must not be empty"),
        (["nightly", "--schedule", "@daily", "-c", "true", "-p", "nowhere"], "unknown provider `nowhere`"),
        (["nightly", "--schedule", "@daily", "-c", "true", "--pool", "nowhere"], "no pool 'nowhere'"),
        (["nightly", "--schedule", "@daily", "-c", "true", "--env", "=x"], "malformed --env"),
        (["nightly", "--schedule", "@daily", "-c", "true", "--timeout", "-1"], "--timeout must be a positive"),
        (["nightly", "--schedule", "@daily", "-c", "true", "--starting-deadline", "soon"], "--starting-deadline"),
        (["nightly", "--schedule", "@daily", "-c", "true", "--after", "@latest"], "unrecognized arguments"),
        (["nightly", "-c", "true"], "the following arguments are required: --schedule"),
    ],
)
def test_a_bad_cron_job_is_refused_with_what_is_wrong_and_nothing_is_written(
    server: ServerProcess, tokens: dict[str, str], args: list[str], message: str
) -> None:
    refused = cli(server, tokens["alice"], "cron", "create", *args, check=False)
    assert refused.returncode == 2
    assert message in refused.stderr
    assert query(
        server.database_url,
        "SELECT count(*) FROM domain_events WHERE aggregate_type = 'CronJob' AND payload ->> 'name' = 'nightly'",
    ) == [(0,)]


def test_cron_run_refuses_an_env_its_job_could_not_run_with(server: ServerProcess, tokens: dict[str, str]) -> None:
    """`cron run --env` goes over the definition's checked spec: checked again, as `job run`'s."""
    alice = tokens["alice"]
    cli(server, alice, "cron", "create", "simmed", "--schedule", "@yearly", "-p", "sim", "-c", "true")
    for env, message in [("HODEI_SIM_SECONDS=soon", "HODEI_SIM_SECONDS"), ("1X=2", "malformed --env")]:
        refused = cli(server, alice, "cron", "run", "simmed", "--env", env, check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert jobs_of(server, "simmed") == []
    cli(server, alice, "cron", "delete", "simmed")


def test_the_api_refuses_what_the_cli_cannot_send(server: ServerProcess, tokens: dict[str, str]) -> None:
    spec = common_pb2.JobSpec(name="x", command="true", timeout_seconds=60, provider="local")
    then = common_pb2.JobSpec(**{**_fields(spec), "name": "then", "after": {"#0": "ok"}, "secret_names": ["TOKEN"]})
    cases = [
        (
            cron_pb2.CreateCronJobRequest(name="api", schedule="@daily", spec=spec, concurrency="sometimes"),
            "concurrency must be one of allow, forbid, replace, got 'sometimes'",
        ),
        (
            cron_pb2.CreateCronJobRequest(name="api", schedule="@daily", spec=spec, starting_deadline_seconds=-1),
            "starting deadline",
        ),
        (
            cron_pb2.CreateCronJobRequest(
                name="api", schedule="@daily", spec=spec, starting_deadline_seconds=float("nan")
            ),
            "starting deadline",
        ),
        (
            cron_pb2.CreateCronJobRequest(
                name="api", schedule="@daily", spec=common_pb2.JobSpec(**{**_fields(spec), "after": {"x": "ok"}})
            ),
            "--after",
        ),
        (cron_pb2.CreateCronJobRequest(name="", schedule="@daily", spec=spec), "a cron job's name"),
        (
            cron_pb2.CreateCronJobRequest(
                name="api", schedule="@daily", spec=spec, more_specs=[then], secrets={"TOKEN": SECRET, "OTHER": SECRET}
            ),
            "secret OTHER: none of the cron job's jobs names it",
        ),
        (
            cron_pb2.CreateCronJobRequest(name="api", schedule="@daily", spec=spec, more_specs=[then]),
            "the cron job's jobs name the secrets TOKEN: give their values",
        ),
        (
            cron_pb2.CreateCronJobRequest(
                name="api",
                schedule="@daily",
                spec=spec,
                more_specs=[common_pb2.JobSpec(**{**_fields(then), "provider": "nosuch"})],
                secrets={"TOKEN": SECRET},
            ),
            "job 2 of the cron job (then): ",
        ),
    ]
    with server.channel() as channel:
        stub = cron_pb2_grpc.CronServiceStub(channel)
        metadata = (("authorization", f"Bearer {tokens['alice']}"),)
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateCronJob(request, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert message in (refused.value.details() or ""), refused.value.details()
    assert query(
        server.database_url,
        "SELECT count(*) FROM domain_events WHERE aggregate_type = 'CronJob' AND payload ->> 'name' = 'api'",
    ) == [(0,)]


def _fields(spec: common_pb2.JobSpec) -> dict[str, Any]:
    return {field.name: value for field, value in spec.ListFields()}


def test_two_servers_start_each_time_of_a_cron_job_once(fresh_database_url: str, tmp_path: Path) -> None:
    """Both sweep every second and both find every time due: the job of a time has one id,
    so it is written once (the log refuses the other server's), and nothing of a cron job
    lives in either's memory."""
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1"}
    with (
        ServerProcess(fresh_database_url, tmp_path / "one", env) as one,
        ServerProcess(fresh_database_url, tmp_path / "two", env) as two,
    ):
        one.cli("cron", "create", "both", "--schedule", "@every 1s", "-p", "sim", "-c", "true", check=True)
        eventually(lambda: len(jobs_of(one, "both")) >= 6 or None, timeout=60, what="six times of the cron job")
        two.cli("cron", "pause", "both", check=True)
        times = [
            row[0]
            for row in query(
                fresh_database_url,
                "SELECT spec -> 'env' ->> 'HODEI_CRON_TIME' FROM jobs WHERE spec -> 'labels' ->> %s = 'both'",
                (CRON_LABEL,),
            )
        ]
        assert len(times) == len(set(times)) >= 6
        logs = one.logs() + two.logs()
        assert "cron job both started job" in one.logs() or "cron job both started job" in two.logs()
        assert "could not start" not in logs


PIPELINE = """\
name: build
provider: local
command: echo "built for $HODEI_CRON_TIME"
---
name: test
provider: local
command: echo "token of ${#TOKEN}"
after: {build: ok}
secret_names: [TOKEN]
---
name: report
provider: local
command: echo "build failed"
after: {build: notok}
"""


def test_a_cron_job_runs_a_pipeline_of_jobs_files_its_runs_and_says_how_each_run_ended(
    server: ServerProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    """`cron create --file` of several jobs (a scheduled pipeline, GitLab's scheduled
    pipelines, Argo's CronWorkflow): every run is all of them, each job after those of its
    run it names, given only the secrets it names; `cron run --wait` waits for them all and
    a branch not taken counts 0; the run's state is the pipeline's."""
    alice = tokens["alice"]
    (tmp_path / "release.yaml").write_text(PIPELINE)
    create = ("cron", "create", "release", "--schedule", "@yearly", "--file", str(tmp_path / "release.yaml"))
    shown = cli(server, alice, *create, "--secret", f"TOKEN={SECRET}").stdout
    assert "Runs 3 jobs together (`job list -l hodei.io/workflow=ID`, ID a run's first job):" in shown
    assert '  test: echo "token of ${#TOKEN}" on local, after build:ok' in shown
    assert '  report: echo "build failed" on local, after build:notok' in shown

    ran = cli(server, alice, "cron", "run", "release", "--wait")
    job_ids = ran.stdout.split()
    assert len(job_ids) == 3, ran.stdout
    assert f"cron job release submitted 3 jobs (`job list -l hodei.io/workflow={job_ids[0]}`)" in ran.stderr
    assert "(--after): skipped" in ran.stderr  # report: build succeeded
    states = query(
        server.database_url,
        "SELECT spec ->> 'name', state, cancelled_by FROM jobs WHERE spec -> 'labels' ->> 'hodei.io/workflow' = %s"
        " ORDER BY created_at",
        (job_ids[0],),
    )
    assert states == [("build", "SUCCEEDED", None), ("test", "SUCCEEDED", None), ("report", "CANCELLED", "system")]
    assert cli(server, alice, "job", "logs", job_ids[1]).stdout.strip() == f"token of {len(SECRET)}"
    got = json.loads(cli(server, alice, "cron", "get", "release", "-o", "json").stdout)
    assert (got["last_job_id"], got["last_job_state"]) == (job_ids[0], "SUCCEEDED")
    assert [spec["name"] for spec in [got["spec"], *got["more_specs"]]] == ["build", "test", "report"]
    assert f"Last run: {job_ids[0]} SUCCEEDED" in cli(server, alice, "cron", "get", "release").stdout

    before = len(jobs_of(server, "release"))
    followed = cli(server, alice, "cron", "run", "release", "--follow", check=False)
    assert followed.returncode == 2
    assert "--follow is for one job; cron job release runs 3 together" in followed.stderr
    assert len(jobs_of(server, "release")) == before
    answer = json.loads(cli(server, alice, "cron", "run", "release", "--idempotency-key", "r-1", "-o", "json").stdout)
    again = json.loads(cli(server, alice, "cron", "run", "release", "--idempotency-key", "r-1", "-o", "json").stdout)
    assert (answer["already_submitted"], again["already_submitted"]) == (False, True)
    assert again["job_ids"] == answer["job_ids"] and answer["workflow_id"] == answer["job_ids"][0]
    assert len(jobs_of(server, "release")) == before + 3
    # Redefined as one job, the key still names the run it started, all of it.
    cli(server, alice, "cron", "create", "release", "--schedule", "@yearly", "-p", "local", "-c", "true", "--replace")
    repeat = json.loads(cli(server, alice, "cron", "run", "release", "--idempotency-key", "r-1", "-o", "json").stdout)
    assert (repeat["job_ids"], repeat["already_submitted"]) == (answer["job_ids"], True)
    assert len(jobs_of(server, "release")) == before + 3
    for job_id in answer["job_ids"]:
        wait_settled(server.database_url, job_id, 60)
    events = query(
        server.database_url, "SELECT count(*) FROM domain_events WHERE payload::text LIKE %s", (f"%{SECRET}%",)
    )
    assert events == [(0,)]
    cli(server, alice, "cron", "delete", "release")


@pytest.mark.parametrize(
    ("document", "flags", "message"),
    [
        (
            "name: b\ncommand: 'true'\nafter: {5b1d7a52-8c1e-4c4e-9a55-3f2d0c6f9e10: ok}\n",
            [],
            "job 2 of the cron job (b): a cron job's jobs cannot wait for a time (--begin) or jobs other",
        ),
        (
            "name: b\ncommand: 'true'\n",
            ["--secret", f"NAMELESS={SECRET}"],
            "secret NAMELESS: none of the file's jobs names it",
        ),
        ("name: b\ncommand: 'true'\nsecret_names: [TOKEN]\n", [], "(job b) names the secret TOKEN: give the values"),
        ("name: a\ncommand: 'true'\n", [], "two jobs are named 'a'"),
    ],
)
def test_a_bad_pipeline_is_refused_naming_its_job_and_nothing_is_written(
    server: ServerProcess, tokens: dict[str, str], tmp_path: Path, document: str, flags: list[str], message: str
) -> None:
    (tmp_path / "bad.yaml").write_text(f"name: a\ncommand: 'true'\n---\n{document}")
    refused = cli(
        server,
        tokens["alice"],
        "cron",
        "create",
        "bad-pipeline",
        "--schedule",
        "@daily",
        "--file",
        str(tmp_path / "bad.yaml"),
        *flags,
        check=False,
    )
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert query(
        server.database_url,
        "SELECT count(*) FROM domain_events WHERE aggregate_type = 'CronJob' AND payload ->> 'name' = 'bad-pipeline'",
    ) == [(0,)]


def test_cron_backfill_runs_the_times_of_a_range_that_never_ran(server: ServerProcess, tokens: dict[str, str]) -> None:
    """The last three hours' times of an hourly report, each run with its own time; again:
    nothing new; bob may not backfill alice's cron job, nor anyone a time not come yet."""
    alice, url = tokens["alice"], server.database_url
    command = 'echo "report for $HODEI_CRON_TIME"'
    cli(server, alice, "cron", "create", "hourly", "--schedule", "@hourly", "-p", "local", "-c", command)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    since, until = (hour - timedelta(hours=2)).isoformat(), hour.isoformat()
    times = [(hour - timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ") for n in (2, 1, 0)]
    ran = cli(server, alice, "cron", "backfill", "hourly", "--since", since, "--until", until)
    rows = [line.split("\t") for line in ran.stdout.splitlines()[1:]]
    assert [(row[0], row[2]) for row in rows] == [(time, "submitted") for time in times], ran.stdout
    assert "3 of 3 times submitted, 0 had run" in ran.stderr
    for scheduled, job_id, _ in rows:
        wait_settled(url, job_id)
        said = scheduled.replace("Z", "+00:00")
        assert cli(server, alice, "job", "logs", job_id).stdout == f"report for {said}\n"
    assert {actor for _, _, actor in jobs_of(server, "hourly")} == {"alice"}
    again = json.loads(cli(server, alice, "-o", "json", "cron", "backfill", "hourly", "--since", since).stdout)
    assert [run["already_run"] for run in again["runs"]][:3] == [True, True, True]
    written = len(jobs_of(server, "hourly"))
    refused = cli(server, tokens["bob"], "cron", "backfill", "hourly", "--since", since, check=False)
    assert refused.returncode != 0 and "may backfill only its own cron jobs" in refused.stderr, refused.stderr
    ahead = cli(
        server, alice, "cron", "backfill", "hourly", "--since", since, "--until", "2099-01-01T00:00:00Z", check=False
    )
    assert ahead.returncode == 2 and "has not come yet" in ahead.stderr, ahead.stderr
    assert len(jobs_of(server, "hourly")) == written
    cli(server, alice, "cron", "delete", "hourly")
