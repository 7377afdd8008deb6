"""The operator's view end to end: `job describe`, `saga list|show` and the phases of
`job get`, checked against the rows of sagas, saga_steps and saga_audit_events (what
the seed's step 6.7 reads with SQL)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from e2e.test_local import agent_pid
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.testing import (
    ServerProcess,
    allow_new_sagas,
    eventually,
    hodei_server,
    query,
    refuse_new_sagas,
    wait_running,
    wait_settled,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "3",
        "HODEI_KILL_GRACE": "1",
        "HODEI_LOCAL_MAX_WORKERS": "1",
    }
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process
    print(process.logs()[-5000:])


def run(server: ServerProcess, *args: str) -> str:
    return server.cli("job", "run", "--provider", "local", *args, check=True).stdout.strip()


def described(server: ServerProcess, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(server.cli("job", "describe", job_id, "-o", "json", check=True).stdout)
    return data


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_matches_the_rows(url: str, job_id: str, shown: dict[str, Any]) -> None:
    """Every saga, step and audit entry the seed's 6.7 queries return, and nothing else."""
    sagas = query(
        url,
        "SELECT id::text, saga_type, state, attempt, error_message, started_at, completed_at "
        "FROM sagas WHERE correlation_id = %s ORDER BY started_at, id",
        (job_id,),
    )
    assert [saga["id"] for saga in shown["sagas"]] == [row[0] for row in sagas]
    for saga, (saga_id, saga_type, state, attempt, error, started, completed) in zip(
        shown["sagas"], sagas, strict=True
    ):
        assert (saga["saga_type"], saga["state"], saga["attempt"]) == (saga_type, state, attempt)
        assert saga["error_message"] == (error or "")
        assert (_at(saga["started_at"]), _at(saga["completed_at"])) == (started, completed)
        assert saga["duration_seconds"] == pytest.approx((completed - started).total_seconds(), abs=1e-3)
        steps = query(
            url,
            "SELECT step_name, state, retry_count, error_message, started_at, completed_at "
            "FROM saga_steps WHERE saga_id = %s ORDER BY step_order",
            (saga_id,),
        )
        assert [
            (s["name"], s["state"], s["retry_count"], s["error_message"] or None, _at(s["started_at"]))
            for s in saga["steps"]
        ] == [row[:5] for row in steps]
        for step, row in zip(saga["steps"], steps, strict=True):
            assert step["compensated"] == (row[1] in ("COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"))
            if row[4] is not None and row[5] is not None:
                assert step["duration_seconds"] == pytest.approx((row[5] - row[4]).total_seconds(), abs=1e-3)
        audit = query(
            url,
            "SELECT event_type, step_name, message, occurred_at FROM saga_audit_events "
            "WHERE saga_id = %s ORDER BY occurred_at, id",
            (saga_id,),
        )
        assert [
            (a["event_type"], a["step_name"] or None, a["message"], _at(a["occurred_at"])) for a in saga["audit"]
        ] == audit


def phases(shown: dict[str, Any]) -> list[tuple[str, int]]:
    return [(phase["name"], phase["attempt"]) for phase in shown["job"]["phases"]]


def test_describe_shows_what_the_saga_tables_hold(server: ServerProcess, shared_dir: Path) -> None:
    url = server.database_url
    # Recovered after its worker was killed, then failing in execution on its second attempt.
    marker = shared_dir / "first-attempt"
    recovered = run(
        server,
        "--max-attempts",
        "2",
        "--command",
        f"if [ -e {marker} ]; then echo second; exit 3; fi; touch {marker}; sleep 300",
    )
    wait_running(url, recovered)
    os.kill(agent_pid(recovered), signal.SIGKILL)
    wait_settled(url, recovered, 90)
    # Cancelled while running; it holds the only slot, so the next one fails provisioning.
    cancelled = run(server, "--command", "sleep 300")
    wait_running(url, cancelled)
    queued_out = run(server, "--command", "true", "--queue-timeout", "1")
    wait_settled(url, queued_out, 60)
    server.cli("job", "cancel", cancelled, check=True)
    wait_settled(url, cancelled, 60)
    succeeded = run(server, "--command", "echo fine")
    wait_settled(url, succeeded, 60)

    for job_id in (recovered, cancelled, queued_out, succeeded):
        assert_matches_the_rows(url, job_id, described(server, job_id))

    shown = described(server, recovered)
    assert shown["job"]["state"] == "FAILED"
    assert shown["job"]["exit_code"] == 3
    types = [(saga["saga_type"], saga["attempt"]) for saga in shown["sagas"]]
    assert ("RECOVERY", 1) in types
    assert ("PROVISIONING", 2) in types
    assert ("EXECUTION", 2) in types
    assert [w["attempt"] for w in shown["workers"]] == [1, 2]
    assert ("requeued", 1) in phases(shown)
    assert ("started", 2) in phases(shown)
    assert phases(shown)[0] == ("queued", 1)
    assert ("finished", 2) in phases(shown)

    failed_provisioning = described(server, queued_out)
    assert failed_provisioning["job"]["state"] == "FAILED"
    (provisioning,) = failed_provisioning["sagas"]
    assert provisioning["state"] == "FAILED"
    failing = [step for step in provisioning["steps"] if step["state"] == "FAILED"]
    assert [step["name"] for step in failing] == ["wait_for_slot"]
    assert any(step["compensated"] for step in provisioning["steps"])
    assert failed_provisioning["workers"] == []

    done = described(server, succeeded)
    names = [name for name, _ in phases(done)]
    assert names[:2] == ["queued", "provider_chosen"]
    assert {"admitted", "worker_created", "registered", "started", "finished", "logs_stored"} <= set(names)
    eventually(lambda: "worker_released" in [name for name, _ in phases(described(server, succeeded))], 30)
    # `job get -o json` carries the same phases.
    got = json.loads(server.cli("job", "get", succeeded, "-o", "json", check=True).stdout)
    assert [p["name"] for p in got["phases"]][: len(names)] == names


def test_saga_list_and_show_answer_the_seed_queries(server: ServerProcess) -> None:
    url = server.database_url
    job_id = run(server, "--command", "echo listed", "--wait")
    wait_settled(url, job_id, 60)
    listed = json.loads(server.cli("saga", "list", "--job", job_id, "-o", "json", check=True).stdout)["sagas"]
    rows = query(
        url,
        "SELECT id::text, saga_type, state, correlation_id FROM sagas WHERE correlation_id = %s "
        "ORDER BY started_at DESC, id",
        (job_id,),
    )
    assert [(s["id"], s["saga_type"], s["state"], s["correlation_id"]) for s in listed] == rows
    assert all(s["steps"] == [] for s in listed)
    execution = next(s["id"] for s in listed if s["saga_type"] == "EXECUTION")
    shown = json.loads(server.cli("saga", "show", execution, "-o", "json", check=True).stdout)
    steps = query(url, "SELECT step_name, state FROM saga_steps WHERE saga_id = %s ORDER BY step_order", (execution,))
    assert [(s["name"], s["state"]) for s in shown["steps"]] == steps
    assert (
        len(shown["audit"])
        == query(url, "SELECT count(*) FROM saga_audit_events WHERE saga_id = %s", (execution,))[0][0]
    )

    # Filters, and plain text when piped: the full ids, one saga per line.
    completed = json.loads(
        server.cli("saga", "list", "--type", "execution", "--state", "completed", "-o", "json", check=True).stdout
    )["sagas"]
    assert completed
    assert {(s["saga_type"], s["state"]) for s in completed} == {("EXECUTION", "COMPLETED")}
    table = server.cli("saga", "list", "--job", job_id, check=True).stdout
    assert all(row[0] in table for row in rows)
    tree = server.cli("saga", "show", execution, check=True).stdout
    assert tree.splitlines()[0].startswith(f"EXECUTION saga {execution}")
    assert all(f"{step}: {state}" in tree for step, state in steps)
    text = server.cli("job", "describe", job_id, check=True).stdout
    assert f"Job {job_id}" in text
    assert "Phases" in text
    assert [line.split()[0] for line in text.splitlines() if " saga " in line and "attempt" in line] == [
        row[1] for row in reversed(rows)
    ]


def test_describe_and_saga_refuse_bad_input(server: ServerProcess) -> None:
    unknown = server.cli("job", "describe", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode != 0
    assert "not found" in unknown.stderr
    assert "not found" in server.cli("saga", "show", "nope").stderr
    job_id = server.cli("job", "run", "-p", "local", "-c", "true", check=True).stdout.strip()
    a_job = server.cli("saga", "show", job_id)  # what people have at hand
    assert a_job.returncode != 0
    assert f"saga {job_id} not found; {job_id} is a job: `saga list --job {job_id}` lists its sagas" in a_job.stderr
    bad_state = server.cli("saga", "list", "--state", "DONE")
    assert bad_state.returncode != 0
    assert "state must be one of" in bad_state.stderr


def test_history_is_the_job_row_at_every_event_boundary(server: ServerProcess, shared_dir: Path) -> None:
    """A recovered job: the row sampled while it ran, at every moment, is one of its
    history's states; --version and --at pick the state after each event."""
    url = server.database_url
    columns = "state, attempt, worker_id, exit_code, error_message, started_at, completed_at, updated_at"
    marker = shared_dir / "history-marker"
    job_id = run(
        server,
        "--max-attempts",
        "2",
        "--command",
        f"if [ -e {marker} ]; then echo again; exit 0; fi; touch {marker}; sleep 300",
    )
    sampled: set[tuple[Any, ...]] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sampled.update(query(url, f"SELECT {columns} FROM jobs WHERE id = %s", (job_id,)))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        wait_running(url, job_id)
        os.kill(agent_pid(job_id), signal.SIGKILL)
        wait_settled(url, job_id, 90)
    finally:
        stop.set()
        sampler.join()
    stub = jobs_pb2_grpc.JobExecutionServiceStub(grpc.insecure_channel(server.address))

    def states(**fields: Any) -> list[jobs_pb2.JobHistoryEntry]:
        request = jobs_pb2.GetJobHistoryRequest(job_id=job_id, **fields)
        return list(stub.GetJobHistory(request, timeout=30).entries)

    def shown(job: common_pb2.Job) -> tuple[Any, ...]:
        return (
            job.state,
            job.attempt,
            UUID(job.worker_id) if job.worker_id else None,
            job.exit_code if job.has_exit_code else None,
            job.error_message or None,
            job.started_at.ToDatetime(tzinfo=UTC) if job.HasField("started_at") else None,
            job.completed_at.ToDatetime(tzinfo=UTC) if job.HasField("completed_at") else None,
        )

    entries = states()
    versions = query(url, "SELECT aggregate_version FROM domain_events WHERE aggregate_id = %s ORDER BY 1", (job_id,))
    assert [entry.version for entry in entries] == [version for (version,) in versions]
    history_rows = [shown(entry.job) for entry in entries]
    assert {"PENDING", "ASSIGNED", "RUNNING", "SUCCEEDED"} <= {row[0] for row in history_rows}
    assert [entry.job.attempt for entry in entries][-1] == 2
    # The live row now is the last state, and every row seen while it ran is a state of the history.
    live = query(url, f"SELECT {columns} FROM jobs WHERE id = %s", (job_id,))[0]
    assert history_rows[-1] == live[:7]
    assert {row[:7] for row in sampled} <= set(history_rows), {row[:7] for row in sampled} - set(history_rows)
    assert len(sampled) >= 3
    # Each boundary: --version N is the state after event N; --at its time is the state
    # after the last event of that moment, and a microsecond before, the state before it.
    moments = [entry.occurred_at.ToDatetime(tzinfo=UTC) for entry in entries]
    for index, entry in enumerate(entries):
        assert [shown(e.job) for e in states(version=entry.version)] == [history_rows[index]]
        last_at_that_moment = max(i for i, moment in enumerate(moments) if moment == moments[index])
        at = Timestamp()
        at.FromDatetime(moments[index])
        assert [shown(e.job) for e in states(at=at)] == [history_rows[last_at_that_moment]]
        first_at_that_moment = moments.index(moments[index])
        if first_at_that_moment > 0:
            at.FromDatetime(moments[index] - timedelta(microseconds=1))
            assert [shown(e.job) for e in states(at=at)] == [history_rows[first_at_that_moment - 1]]
    # The CLI: a table of every state, and one moment as `job get` shows a job.
    table = server.cli("job", "history", job_id, check=True).stdout
    assert len(table.splitlines()) == len(entries) + 1
    one = server.cli("job", "history", job_id, "--version", "1", check=True).stdout
    assert "As of event 1 (JobCreated" in one and "Status: PENDING" in one
    for when in ("2000-01-01T00:00:00Z", "10d"):  # a time, or a duration back from now
        before = server.cli("job", "history", job_id, "--at", when)
        assert before.returncode == 2
        assert "did not exist yet" in before.stderr
    assert "Status: SUCCEEDED" in server.cli("job", "history", job_id, "--at", "0s", check=True).stdout
    malformed = server.cli("job", "history", job_id, "--at", "yesterday")
    assert malformed.returncode == 2
    assert "argument --at: takes a duration such as 10m or 2h, or an ISO 8601 time" in malformed.stderr


def test_replay_of_one_job_finds_and_repairs_its_rows(server: ServerProcess) -> None:
    url = server.database_url
    job_id = run(server, "--command", "echo replayed", "--wait")
    wait_settled(url, job_id, 60)
    verified = hodei_server(url, "replay", "--job", job_id, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"job {job_id}'s rows match domain_events" in verified.stdout
    query(url, "UPDATE jobs SET exit_code = 99 WHERE id = %s", (job_id,))
    query(
        url,
        "DELETE FROM saga_audit_events WHERE saga_id IN (SELECT id FROM sagas WHERE correlation_id = %s)",
        (job_id,),
    )
    broken = hodei_server(url, "replay", "--job", job_id, "--verify")
    assert broken.returncode == 1
    assert "jobs: differs" in broken.stdout and "saga_audit_events: differs" in broken.stdout
    applied = hodei_server(url, "replay", "--job", job_id, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert query(url, "SELECT exit_code FROM jobs WHERE id = %s", (job_id,)) == [(0,)]
    assert hodei_server(url, "replay", "--job", job_id, "--verify").returncode == 0
    everything = hodei_server(url, "replay", "--verify")
    assert everything.returncode == 0, everything.stdout
    unknown = hodei_server(url, "replay", "--job", "00000000-0000-0000-0000-000000000000", "--verify")
    assert unknown.returncode != 0
    assert "not found" in unknown.stderr


def test_retry_flags_run_a_failing_command_again_each_attempt_a_new_saga(
    server: ServerProcess, shared_dir: Path
) -> None:
    url = server.database_url
    counter = shared_dir / "runs"
    # Fails twice, then succeeds: two retries with a backoff of 1 s.
    command = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3 || exit 7"
    flaky = run(server, "--retry", "2", "--retry-backoff", "1", "--command", command, "--wait")
    wait_settled(url, flaky, 60)
    shown = described(server, flaky)
    assert (shown["job"]["state"], shown["job"]["exit_code"], shown["job"]["attempt"]) == ("SUCCEEDED", 0, 3)
    assert [saga["attempt"] for saga in shown["sagas"] if saga["saga_type"] == "PROVISIONING"] == [1, 2, 3]
    assert [worker["attempt"] for worker in shown["workers"]] == [1, 2, 3]
    requeued = [_at(p["at"]) for p in shown["job"]["phases"] if p["name"] == "requeued"]
    admitted = [_at(p["at"]) for p in shown["job"]["phases"] if p["name"] == "admitted"]
    assert len(requeued) == 2
    assert len(admitted) == 3
    for failed_at, next_admitted in zip(requeued, admitted[1:], strict=True):
        assert next_admitted is not None and failed_at is not None
        assert (next_admitted - failed_at).total_seconds() >= 1.0  # the backoff was kept
    reasons = query(
        url,
        "SELECT payload->>'reason' FROM domain_events WHERE aggregate_id = %s AND payload->>'new_state' = 'PENDING' "
        "ORDER BY position",
        (flaky,),
    )
    assert reasons == [
        ("attempt 1 failed (exited with code 7); retry 1 of 2",),
        ("attempt 2 failed (exited with code 7); retry 2 of 2",),
    ]
    # `job describe` says why each attempt ended, without SQL.
    ended = [(p["attempt"], p["detail"]) for p in shown["job"]["phases"] if p["name"] in ("requeued", "finished")]
    assert ended == [(1, reasons[0][0]), (2, reasons[1][0]), (3, "")]  # a success needs no reason
    assert_matches_the_rows(url, flaky, shown)
    # Out of retries, the last attempt's result stands.
    hopeless = server.cli("job", "run", "--provider", "local", "--retry", "1", "--command", "exit 5", "--wait")
    assert hopeless.returncode == 5
    job_id = hopeless.stdout.strip()
    wait_settled(url, job_id, 60)
    assert query(url, "SELECT state, exit_code, attempt FROM jobs WHERE id = %s", (job_id,)) == [("FAILED", 5, 2)]
    refused = server.cli("job", "run", "--provider", "local", "--retry", "-1", "--command", "true")
    assert refused.returncode != 0
    assert "retries must be between 0 and 100" in refused.stderr


def test_after_starts_a_job_once_another_ended_as_asked_and_cancels_one_that_never_can(
    server: ServerProcess, shared_dir: Path
) -> None:
    """Slurm's --dependency afterok/afternotok/afterany: `job run --after ID[:ok|:notok|:any]`.
    One provider slot: the jobs waiting for `first` stay out of the line (the queue says
    why, and what they wait for); once it failed the notok one runs, the any one after it
    (named by @latest), and the ok one is cancelled by the platform, saying why."""
    url = server.database_url
    order = shared_dir / "order"
    release = shared_dir / "release"  # `first` runs until the test has seen the others wait
    first = run(server, "--command", f"until [ -e {release} ]; do sleep 0.1; done; echo first >> {order}; exit 3")
    on_failure = run(server, "--after", f"{first}:notok", "--command", f"echo notok >> {order}")
    on_any = run(server, "--after", "@latest:any", "--command", f"echo any >> {order}")
    on_success = run(server, "--after", first[:8], "--command", f"echo never >> {order}")

    def waiting() -> str | None:
        shown = server.cli("job", "get", on_success, check=True).stdout
        return shown if "that job is RUNNING" in shown else None

    shown = eventually(waiting, what="the waiting job says what it waits for")
    assert f"After: {first} once it has succeeded" in shown
    assert f"it starts once job {first} has succeeded (--after); that job is RUNNING" in shown
    queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
    assert {job["job_id"]: job["position"] for job in queued} == {on_failure: 0, on_any: 0, on_success: 0}
    assert next(job for job in queued if job["job_id"] == on_any)["reason"] == (
        f"it starts once job {on_failure} has ended (--after); that job is PENDING"
    )
    release.touch()

    for job_id in (first, on_failure, on_any, on_success):
        wait_settled(url, job_id, 60)
    assert order.read_text().split() == ["first", "notok", "any"]
    states = dict(
        query(
            url,
            "SELECT id::text, state FROM jobs WHERE id = ANY(%s::uuid[])",
            ([first, on_failure, on_any, on_success],),
        )
    )
    assert states == {first: "FAILED", on_failure: "SUCCEEDED", on_any: "SUCCEEDED", on_success: "CANCELLED"}
    assert query(url, "SELECT error_message, cancelled_by FROM jobs WHERE id = %s", (on_success,)) == [
        (f"job {first} ended FAILED, and this job was to start once it has succeeded (--after)", "system")
    ]
    assert server.cli("job", "get", on_success, "-o", "json", check=True).stdout.count(f'"{first}": "ok"') == 1
    assert f"Waited on by: {on_failure}, {on_success}\n" in server.cli("job", "get", first, check=True).stdout

    # Refused, and nothing written: an ended job that can no longer be as asked, an
    # unknown one, a condition that is not one.
    jobs = query(url, "SELECT count(*) FROM jobs")
    for flags, said in [
        (
            ("--after", first),
            f"after: job {first} ended FAILED, and this job was to start once it has succeeded",
        ),
        (
            ("--after", f"{on_failure}:notok"),
            f"job {on_failure} ended SUCCEEDED, and this job was to start once it has failed",
        ),
        (("--after", "00000000-0000-4000-8000-000000000000"), "not found"),
        (("--after", f"{first}:maybe"), "the condition must be ok"),
        (("--after", f"{on_failure}:any", "--after", f"{on_failure[:10]}:any"), "is named twice"),
    ]:
        refused = server.cli("job", "run", "--provider", "local", "--command", "true", *flags)
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert said in refused.stderr
    assert query(url, "SELECT count(*) FROM jobs") == jobs


def test_begin_starts_a_job_no_sooner_and_its_queue_timeout_counts_from_then(server: ServerProcess) -> None:
    """`job run --begin 8s` (Slurm's --begin, at(1)): out of line until then, holding no
    slot (a job after it runs first); a --queue-timeout shorter than the wait still lets it
    run (it counts from the begin time). Bad times are refused before anything is sent."""
    url = server.database_url
    held = run(server, "--begin", "8s", "--queue-timeout", "3", "--command", "true")  # room to look at it
    shown = server.cli("job", "get", held, check=True).stdout
    assert "Begins: not before " in shown and "(--begin)" in shown
    begin_at = datetime.fromisoformat(shown.split("Begins: not before ")[1].split(" ")[0])
    queued = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
    [entry] = [job for job in queued if job["job_id"] == held]
    assert entry["position"] == 0 and entry["reason"].startswith("it begins at ")
    meanwhile = run(server, "--command", "true", "--wait")
    wait_settled(url, held, 60)
    rows = query(url, "SELECT state, started_at FROM jobs WHERE id = %s", (held,))
    assert rows[0][0] == "SUCCEEDED"
    assert rows[0][1] >= begin_at
    first_done = query(url, "SELECT completed_at FROM jobs WHERE id = %s", (meanwhile,))[0][0]
    assert first_done < rows[0][1]

    for value in ("tomorrow", "2026-13-01T00:00:00"):
        refused = server.cli("job", "run", "--provider", "local", "--command", "true", "--begin", value)
        assert refused.returncode == 2 and "--begin: takes a duration from now" in refused.stderr, refused.stderr


def test_a_held_job_waits_out_of_line_until_released_and_bad_holds_change_nothing(
    server: ServerProcess, shared_dir: Path
) -> None:
    """Slurm's `sbatch -H` / `scontrol hold|release`, a suspended Kubernetes Job: a job
    submitted held is passed by a later one (one slot), says who held it and why (`job get`,
    `queue`, its phases), and runs once released. `job hold` holds a queued job and never
    one already running; several ids are changed in turn, a refused one said."""
    url = server.database_url
    held = run(server, "--hold", "--hold-reason", "the data is not there yet", "--command", "echo held")
    shown = server.cli("job", "get", held, check=True).stdout
    assert f"Held: by anonymous: the data is not there yet; it waits out of line until `job release {held}`" in shown
    assert "Waiting:" not in shown  # said once
    listed = server.cli("job", "list", "--state", "PENDING", check=True).stdout
    assert any(held in line and "PENDING (held)" in line for line in listed.splitlines()), listed
    [entry] = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
    assert (entry["job_id"], entry["position"]) == (held, 0)
    assert entry["reason"] == "held by anonymous: the data is not there yet (job release)"
    meanwhile = run(server, "--command", "true", "--wait")
    wait_settled(url, meanwhile, 60)
    assert query(url, "SELECT state, held_by FROM jobs WHERE id = %s", (held,)) == [("PENDING", "anonymous")]
    updated = server.cli("job", "update", held, "--priority", "-3", check=True)
    assert f"Job {held} priority -3" in updated.stderr
    [entry] = json.loads(server.cli("queue", "-o", "json", check=True).stdout)["queued"]
    assert entry["priority"] == -3

    released = server.cli("job", "release", held[:8], check=True)
    assert f"Job {held} released: back in its line" in released.stderr
    wait_settled(url, held, 60)
    assert query(url, "SELECT state, held_by, hold_reason FROM jobs WHERE id = %s", (held,)) == [
        ("SUCCEEDED", None, None)
    ]
    assert [(p["name"], p.get("detail", "")) for p in described(server, held)["job"]["phases"]][:3] == [
        ("queued", ""),
        ("held", "by anonymous: the data is not there yet"),
        ("provider_chosen", ""),
    ]
    assert "released" in [name for name, _ in phases(described(server, held))]

    # `job hold` of a queued job (behind one that runs), with an unknown and a running one.
    release = shared_dir / "release-hold"
    running = run(server, "--command", f"until [ -e {release} ]; do sleep 0.1; done")
    wait_running(url, running, 60)
    queued = run(server, "--command", "true")
    unknown = "00000000-0000-4000-8000-000000000000"
    several = server.cli("job", "hold", queued, unknown, running, "--reason", "maintenance")
    assert several.returncode == 2, several.stderr
    assert f"Job {queued} held by anonymous" in several.stderr
    assert "not found" in several.stderr
    assert f"job {running} is RUNNING: only a job waiting in the queue can be held (cancel it instead)" in (
        several.stderr
    )
    release.touch()
    wait_settled(url, running, 60)
    time.sleep(1.5)  # a sweep's admission round, which must pass the held job by
    assert query(url, "SELECT state, hold_reason FROM jobs WHERE id = %s", (queued,)) == [("PENDING", "maintenance")]
    server.cli("job", "release", queued, check=True)
    again = server.cli("job", "release", queued)
    assert again.returncode != 0 and "not held: nothing to release" in again.stderr, again.stderr
    wait_settled(url, queued, 60)

    # Refused at the edge, nothing written.
    jobs = query(url, "SELECT count(*) FROM jobs")
    events = query(url, "SELECT count(*) FROM domain_events")
    for args, said in [
        (("job", "run", "--provider", "local", "--command", "true", "--hold-reason", "x"), "add --hold"),
        (("job", "hold", unknown), "not found"),
        (("job", "release", unknown), "not found"),
        (("job", "hold", queued, "--reason", "x" * 1001), "at most 1000 characters"),
        (("job", "hold", queued), "is SUCCEEDED: only a job waiting in the queue can be held"),
        (("job", "update", queued, "--priority", "1"), "is SUCCEEDED: only a job waiting in the queue changes"),
        (("job", "update", held, "--priority", "5000"), "priority must be between -1000 and 1000"),
        (("job", "update", queued), "nothing to change: give --priority, --timeout, --cpu, --memory or --disk"),
    ]:
        refused = server.cli(*args)
        assert refused.returncode != 0 and said in refused.stderr, (args, refused.stderr)
    assert query(url, "SELECT count(*) FROM jobs") == jobs
    assert query(url, "SELECT count(*) FROM domain_events") == events


def test_job_retry_submits_a_finished_job_again_linked_to_it(server: ServerProcess) -> None:
    url = server.database_url
    # Exit 9 only when the secret is there: the retry must carry it too. (Its value is not
    # written whole: a submission writing a secret's value is refused.)
    command = 'test "${TOKEN%-1234}" = sesame && exit 9; exit 1'
    first = server.cli(
        "job", "run", "--provider", "local", "--secret", "TOKEN=sesame-1234", "--command", command, "--wait"
    )
    assert first.returncode == 9, first.stderr
    old = first.stdout.strip()
    wait_settled(url, old, 60)
    again = server.cli("job", "retry", old, "--wait")
    assert again.returncode == 9, again.stderr
    new = again.stdout.strip()
    assert new != old
    wait_settled(url, new, 60)
    assert query(url, "SELECT spec, retry_of::text FROM jobs WHERE id = %s", (new,))[0] == (
        query(url, "SELECT spec FROM jobs WHERE id = %s", (old,))[0][0],
        old,
    )
    assert "Retried by: " + new in server.cli("job", "get", old, check=True).stdout
    assert "Retry of: " + old in server.cli("job", "get", new, check=True).stdout
    assert described(server, new)["job"]["retry_of"] == old
    assert described(server, old)["job"]["retried_by"] == [new]
    running = run(server, "--command", "sleep 30")
    refused = server.cli("job", "retry", running)
    assert refused.returncode != 0
    assert "only a finished job is retried" in refused.stderr
    server.cli("job", "cancel", running, check=True)
    wait_settled(url, running, 60)


def test_a_dead_lettered_delivery_is_redriven_and_its_job_moves_on(fresh_database_url: str, tmp_path: Path) -> None:
    """Starting sagas fails for a while (a trigger refuses new sagas): the JobCreated
    delivery gives up; once the cause is gone, a redrive starts the job's saga."""
    url = fresh_database_url
    refuse_new_sagas(url)
    env = {"HODEI_RELAY_MAX_ATTEMPTS": "2", "HODEI_DOCKER_ENABLED": "0"}
    with ServerProcess(url, tmp_path, env) as server:
        job_id = run(server, "--command", "echo redriven")

        def dead_letters() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = json.loads(
                server.cli("outbox", "dead-letters", "-o", "json", check=True).stdout
            )["dead_letters"]
            return rows

        (letter,) = eventually(dead_letters, 60, what="the JobCreated delivery to give up")
        assert (letter["event_type"], letter["job_id"], letter["attempts"]) == ("JobCreated", job_id, 2)
        assert "sagas are refused by the test" in letter["last_error"]
        assert query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("PENDING",)]
        missing = server.cli("outbox", "redrive", "00000000-0000-0000-0000-000000000000")
        assert missing.returncode != 0
        assert "no dead letter" in missing.stderr
        allow_new_sagas(url)
        redriven = server.cli("outbox", "redrive", letter["id"], check=True)
        assert redriven.stdout.split() == [letter["id"]]
        assert wait_terminal(url, job_id, 60) == "SUCCEEDED"
        assert dead_letters() == []
        assert server.cli("job", "logs", job_id, check=True).stdout == "redriven\n"
        both = server.cli("outbox", "redrive", letter["id"], "--all")
        assert both.returncode != 0
        assert "give the ids of the rows to redrive, or all" in both.stderr


def test_replay_apply_while_twenty_jobs_run(fresh_database_url: str, tmp_path: Path) -> None:
    """The rebuild runs beside the platform: jobs keep moving (their events land while it
    projects), all end as they should, and writers wait only for the final swap."""
    url = fresh_database_url
    with ServerProcess(url, tmp_path, {"HODEI_DOCKER_ENABLED": "0", "HODEI_LOCAL_MAX_WORKERS": "20"}) as server:
        warm_up = [run(server, "--command", f"echo warm-up {i}") for i in range(10)]
        for job_id in warm_up:
            wait_settled(url, job_id, 90)
        job_ids = [run(server, "--command", f"sleep 2; echo done {i}") for i in range(20)]
        # Writes that cannot pause while it runs, however slowly the 20 jobs' workers start
        # (on a busy machine none had registered yet, and nothing was written meanwhile):
        # held jobs submitted one after the other until it ends.
        stop = threading.Event()
        held = common_pb2.JobSpec(name="held", command="true", timeout_seconds=60, provider="local")

        def submit_held() -> None:
            stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
            while not stop.is_set():
                stub.QueueJob(jobs_pb2.QueueJobRequest(spec=held, hold=True), timeout=30)

        with server.channel() as channel:
            (started_at,) = query(url, "SELECT max(position) FROM domain_events")[0]
            submitter = threading.Thread(target=submit_held)
            submitter.start()
            try:
                applied = hodei_server(url, "replay", "--apply")
                (ended_at,) = query(url, "SELECT max(position) FROM domain_events")[0]
            finally:
                stop.set()
                submitter.join()
        assert applied.returncode == 0, applied.stderr
        print(applied.stdout)
        assert "no write waited longer" in applied.stdout
        for job_id in job_ids:
            wait_settled(url, job_id, 120)
        assert query(
            url, "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND state = 'SUCCEEDED'", (job_ids,)
        ) == [(20,)]
        assert all(server.cli("job", "logs", job_id, check=True).stdout.startswith("done") for job_id in job_ids)
    # The jobs kept writing while it ran: events landed between its start and its end.
    assert ended_at > started_at
    verified = hodei_server(url, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout
