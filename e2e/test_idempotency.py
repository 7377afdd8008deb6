"""Idempotent submission (`job run --idempotency-key`, QueueJobRequest.idempotency_key):
a key sent again answers the job it submitted and submits nothing, another request with
it is refused with nothing written, racing repeats write one job, and a `job run` whose
answer was lost (the server killed between the commit and the reply) sends its request
again and submits one job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.testing import ServerProcess, query

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs")) as process:
        yield process


RUN_LOST = ("job", "run", "-p", "local", "-c", "echo lost answer", "--wait")


def jobs_of(url: str, command: str) -> list[str]:
    return [row[0] for row in query(url, "SELECT id::text FROM jobs WHERE spec->>'command' = %s", (command,))]


def test_a_key_sent_again_answers_its_job_and_submits_nothing(server: ServerProcess) -> None:
    url = server.database_url
    run = ("job", "run", "-p", "local", "-c", "echo once", "--idempotency-key", "deploy/42@prod")
    first = server.cli(*run, check=True)
    again = server.cli(*run, check=True)
    assert again.stdout == first.stdout
    job_id = first.stdout.strip()
    assert first.stderr == ""
    shown = server.cli("-o", "json", *run, check=True)  # a script reads whether it made a job
    assert json.loads(shown.stdout) == {"job_id": first.stdout.strip(), "already_submitted": True}
    assert again.stderr == (
        f"[hodei] idempotency key deploy/42@prod submitted job {job_id} before: nothing new submitted\n"
    )
    assert jobs_of(url, "echo once") == [job_id]
    ((created,),) = query(
        url, "SELECT count(*) FROM domain_events WHERE aggregate_id = %s AND event_type = 'JobCreated'", (job_id,)
    )
    assert created == 1

    other = server.cli("job", "run", "-p", "local", "-c", "echo twice", "--idempotency-key", "deploy/42@prod")
    assert (other.returncode, other.stdout) == (2, "")
    assert f"idempotency key `deploy/42@prod` submitted job {job_id} with another request" in other.stderr
    assert "(ALREADY_EXISTS)" in other.stderr
    assert jobs_of(url, "echo twice") == []
    # Whatever else the request says counts too: the same command, now held.
    held = server.cli(*run, "--hold")
    assert held.returncode == 2 and "with another request" in held.stderr, held.stderr

    # A new key is a new submission, of the same command too.
    fresh = server.cli("job", "run", "-p", "local", "-c", "echo once", "--idempotency-key", "deploy/43@prod")
    assert fresh.returncode == 0 and fresh.stdout != first.stdout
    assert sorted(jobs_of(url, "echo once")) == sorted([job_id, fresh.stdout.strip()])


def test_an_arrays_key_answers_every_job_of_it(server: ServerProcess) -> None:
    run = ("job", "run", "-p", "local", "-c", "echo member", "--array", "0-3", "--idempotency-key", "nightly-7")
    first = server.cli(*run, check=True)
    again = server.cli(*run, check=True)
    assert again.stdout == first.stdout and len(first.stdout.split()) == 4
    assert sorted(jobs_of(server.database_url, "echo member")) == sorted(first.stdout.split())
    fewer = server.cli(
        "job", "run", "-p", "local", "-c", "echo member", "--array", "0-2", "--idempotency-key", "nightly-7"
    )
    assert fewer.returncode == 2 and "with another request" in fewer.stderr, fewer.stderr
    assert len(jobs_of(server.database_url, "echo member")) == 4


def test_secret_values_are_compared_without_being_stored(server: ServerProcess) -> None:
    """The digest leaves the values out (no hash of a secret in the log): they are opened
    with the job's key and compared."""
    run = ("job", "run", "-p", "local", "-c", "echo $TOKEN", "--idempotency-key", "with-secret")
    first = server.cli(*run, "--secret", "TOKEN=first-value", check=True)
    assert server.cli(*run, "--secret", "TOKEN=first-value", check=True).stdout == first.stdout
    changed = server.cli(*run, "--secret", "TOKEN=other-value")
    assert changed.returncode == 2 and "with another request" in changed.stderr, changed.stderr
    assert jobs_of(server.database_url, "echo $TOKEN") == [first.stdout.strip()]
    logged = query(server.database_url, "SELECT payload::text FROM domain_events WHERE event_type = 'JobCreated'")
    assert not any("first-value" in payload for (payload,) in logged)


def test_racing_repeats_write_one_job(server: ServerProcess) -> None:
    """Eight calls at once with one key: the event log refuses every JobCreated of its
    derived id but the first, and each loser answers the winner's job. With a secret, their
    seals race for the job's key too: one that waited on the winner's insert reads it anew
    (its statement's snapshot could not see it: an INTERNAL error before)."""
    spec = common_pb2.JobSpec(
        name="race", command="echo race", timeout_seconds=60, provider="local", secret_names=["TOKEN"]
    )
    request = jobs_pb2.QueueJobRequest(spec=spec, secrets={"TOKEN": "race-secret"}, idempotency_key="race-1")
    with server.channel() as channel, ThreadPoolExecutor(8) as pool:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        answers = list(pool.map(lambda _: stub.QueueJob(request, timeout=60), range(8)))
    assert len({answer.job_id for answer in answers}) == 1
    assert sorted(answer.already_submitted for answer in answers) == [False] + [True] * 7
    assert jobs_of(server.database_url, "echo race") == [answers[0].job_id]


def test_a_bad_key_is_refused_before_anything_is_sent(server: ServerProcess) -> None:
    for key, reason in (("two words", "'two words'"), ("x" * 129, "'" + "x" * 129 + "'"), ("ключ", "'ключ'")):
        refused = server.cli("job", "run", "-p", "local", "-c", "echo never", "--idempotency-key", key)
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert (
            f"an idempotency key is 1 to 128 letters, digits and ._:/@+=- (a UUID, a deploy's name), got {reason}"
            in (refused.stderr)
        )
    spec = common_pb2.JobSpec(name="k", command="echo never", timeout_seconds=60, provider="local")
    with server.channel() as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused_by_api:
            stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec, idempotency_key="a;b"), timeout=60)
    assert refused_by_api.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert jobs_of(server.database_url, "echo never") == []


def test_a_run_whose_answer_was_lost_sends_it_again_and_submits_one_job(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """The server dies (kill -9) once the job is committed, before QueueJob answers: the
    CLI, with a key of its own, sends the request again to the server started anew, gets
    the job the first try submitted, and waits for it."""
    crashing = ServerProcess(fresh_database_url, tmp_path, {"HODEI_FAULT": "submit-committed"}).start()
    try:
        running = crashing.spawn(*RUN_LOST)
        assert crashing.process is not None
        crashing.process.wait(timeout=60)  # killed itself at the point
        assert jobs_of(fresh_database_url, "echo lost answer") != []
        crashing.env["HODEI_FAULT"] = ""
        crashing.start()
        out, errors = running.communicate(timeout=120)
        assert running.returncode == 0, errors  # --wait: the job succeeded
        (job_id,) = jobs_of(fresh_database_url, "echo lost answer")
        assert out.strip() == job_id
        assert "[hodei] no answer to the submission" in errors and "sending it again (idempotency key" in errors
        assert f"[hodei] the first try had submitted job {job_id}: nothing new submitted" in errors
    finally:
        crashing.stop()


def test_a_retry_with_a_key_makes_one_copy(server: ServerProcess) -> None:
    """`job retry` takes a key as `job run` does, from the same key space: the copy it made,
    again; the key for another job, or one a `job run` used, refused."""
    url = server.database_url
    failed = server.cli("job", "run", "-p", "local", "-c", "exit 3", "--wait")
    assert failed.returncode == 3, failed.stderr
    job_id = failed.stdout.split()[0]
    first = server.cli("job", "retry", job_id, "--idempotency-key", "retry-of-3", check=True)
    again = server.cli("job", "retry", job_id[:8], "--idempotency-key", "retry-of-3", check=True)
    assert first.stdout == again.stdout
    assert f"idempotency key retry-of-3 submitted job {first.stdout.strip()} before" in again.stderr
    assert query(url, "SELECT id::text FROM jobs WHERE retry_of = %s", (job_id,)) == [(first.stdout.strip(),)]
    other = server.cli("job", "run", "-p", "local", "-c", "exit 4", "--wait")
    for args in (("job", "retry", other.stdout.split()[0]), ("job", "run", "-p", "local", "-c", "exit 3")):
        refused = server.cli(*args, "--idempotency-key", "retry-of-3")
        assert refused.returncode == 2 and "with another request" in refused.stderr, refused.stderr
    assert query(url, "SELECT count(*) FROM jobs WHERE retry_of IS NOT NULL") == [(1,)]


def test_a_cron_run_with_a_key_starts_one_job(server: ServerProcess) -> None:
    url = server.database_url
    create = ("cron", "create", "keyed", "--schedule", "@daily", "-p", "local", "-c", "echo $WHO")
    server.cli(*create, check=True)
    run = ("cron", "run", "keyed", "-e", "WHO=first", "--idempotency-key", "manual-1")
    first, again = server.cli(*run, check=True), server.cli(*run, check=True)
    assert first.stdout == again.stdout
    assert f"idempotency key manual-1 submitted job {first.stdout.strip()} before" in again.stderr
    for args in (
        ("cron", "run", "keyed", "-e", "WHO=second"),
        ("job", "run", "-p", "local", "-c", "echo $WHO"),
    ):
        refused = server.cli(*args, "--idempotency-key", "manual-1")
        assert refused.returncode == 2 and "with another request" in refused.stderr, refused.stderr
    assert query(url, "SELECT id::text FROM jobs WHERE spec->>'command' = 'echo $WHO'") == [(first.stdout.strip(),)]
    server.cli("cron", "delete", "keyed", check=True)
