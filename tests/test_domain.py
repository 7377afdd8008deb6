"""The state machines, driven from their transition tables: every move, allowed or not."""

from __future__ import annotations

import ast
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from hodei.domain.job import JOB_TRANSITIONS, Job, JobState, after_met, check_signal
from hodei.domain.limit import DEFAULT, INHERITED, SubmitterLimit, limit_id
from hodei.domain.phases import phases_of
from hodei.domain.pool import Pool, pool_id
from hodei.domain.spec import (
    JobBounds,
    JobSpec,
    LabelSelector,
    Resources,
    array_element,
    array_problems,
    canonical_time,
    name_for,
)
from hodei.domain.worker import WORKER_TRANSITIONS, Worker, WorkerState
from hodei.errors import InvalidInput, InvalidTransition, Unauthenticated

WORKER = "8f9b812b-9710-4b9d-aa4f-51a93b907ea6"
PROVIDER = "11111111-1111-1111-1111-111111111111"


def job_in(state: JobState, max_attempts: int = 2) -> Job:
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5, max_attempts=max_attempts), uuid4())
    path = {
        JobState.PENDING: [],
        JobState.ASSIGNED: ["assign"],
        JobState.RUNNING: ["assign", "accept"],
        JobState.SUCCEEDED: ["assign", "accept", JobState.SUCCEEDED],
        JobState.FAILED: ["assign", "accept", JobState.FAILED],
        JobState.TIMEOUT: ["assign", "accept", JobState.TIMEOUT],
        JobState.CANCELLED: ["cancel"],
    }[state]
    for move in path:
        if move == "assign":
            job.assign(WORKER, PROVIDER, "docker")
        elif move == "accept":
            job.accept(WORKER)
        elif move == "cancel":
            job.cancel("test")
        else:
            job.finish(WORKER, JobState(move), 1, "test")
    assert job.state is state
    return job


def move_job(job: Job, target: JobState) -> None:
    if target is JobState.ASSIGNED:
        job.assign(str(uuid4()), PROVIDER, "docker")
    elif target is JobState.RUNNING:
        job.accept(job.worker_id or WORKER)
    elif target is JobState.PENDING:
        job.requeue("worker lost")
    elif target is JobState.CANCELLED:
        job.cancel("by test")
    elif target is JobState.FAILED:
        job.fail("by test")
    else:
        job.finish(job.worker_id or WORKER, target, 0, None)


JOB_MOVES = [(source, target) for source in JobState for target in JobState if source is not target]
# A worker's result that overtakes its ack passes through RUNNING (hazard: result before ack).
IMPLIED_BY_RESULT = {(JobState.ASSIGNED, JobState.SUCCEEDED), (JobState.ASSIGNED, JobState.TIMEOUT)}


@pytest.mark.parametrize(("source", "target"), JOB_MOVES, ids=[f"{s}->{t}" for s, t in JOB_MOVES])
def test_job_transition(source: JobState, target: JobState) -> None:
    job = job_in(source)
    if (source, target) in IMPLIED_BY_RESULT:
        move_job(job, target)
        states = [getattr(e, "new_state", None) for e in job.collect_events()][-2:]
        assert states == ["RUNNING", target.value]
    elif target in JOB_TRANSITIONS[source]:
        move_job(job, target)
        assert job.state is target
    else:
        with pytest.raises(InvalidTransition):
            move_job(job, target)
        assert job.state is source


def test_terminal_job_states_have_no_exit() -> None:
    for state in JobState:
        assert (JOB_TRANSITIONS[state] == frozenset()) == state.is_terminal


def test_accept_emits_the_seed_events_in_order() -> None:
    job = job_in(JobState.PENDING)
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.finish(WORKER, JobState.SUCCEEDED, 0, None)
    events = job.collect_events()
    assert [type(e).__name__ for e in events] == [
        "JobCreated",
        "JobAssigned",
        "JobAccepted",
        "JobStatusChanged",
        "JobStatusChanged",
    ]
    assert [getattr(e, "new_state", None) for e in events[3:]] == ["RUNNING", "SUCCEEDED"]
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_a_result_before_the_ack_implies_the_ack() -> None:
    job = job_in(JobState.ASSIGNED)
    job.finish(WORKER, JobState.SUCCEEDED, 0, None)
    assert job.state is JobState.SUCCEEDED
    assert [type(e).__name__ for e in job.collect_events()][-3:] == [
        "JobAccepted",
        "JobStatusChanged",
        "JobStatusChanged",
    ]


def test_another_worker_cannot_report_on_the_job() -> None:
    job = job_in(JobState.RUNNING)
    with pytest.raises(InvalidTransition):
        job.finish(str(uuid4()), JobState.SUCCEEDED, 0, None)


def test_the_server_times_out_a_running_job_only() -> None:
    job = job_in(JobState.RUNNING)
    job.time_out("no result")
    assert job.state is JobState.TIMEOUT
    with pytest.raises(InvalidTransition):
        job_in(JobState.ASSIGNED).time_out("no result")


def test_requeue_needs_an_attempt_left() -> None:
    job = job_in(JobState.RUNNING, max_attempts=1)
    with pytest.raises(InvalidTransition, match="attempts"):
        job.requeue("lost")


def worker_in(state: WorkerState) -> Worker:
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    worker = Worker(
        job_id=str(uuid4()),
        attempt=1,
        provider_id=PROVIDER,
        provider_type="docker",
        token_nonce="n",
        token_expires_at=expires,
    )
    path = {
        WorkerState.CREATING: [],
        WorkerState.CONNECTING: [WorkerState.CONNECTING],
        WorkerState.READY: [WorkerState.READY],
        WorkerState.BUSY: [WorkerState.READY, WorkerState.BUSY],
        WorkerState.FAILED: [WorkerState.FAILED],
        WorkerState.TERMINATING: [],
        WorkerState.TERMINATED: [WorkerState.TERMINATED],
    }[state]
    if state is WorkerState.TERMINATING:
        worker._terminating(reason="done")  # as an older server recorded a removal under way
    for step in path:
        move_worker(worker, step)
    assert worker.state is state
    return worker


def move_worker(worker: Worker, target: WorkerState) -> None:
    if target is WorkerState.CONNECTING:
        worker.record_resource(f"container-{uuid4().hex[:6]}")
        if worker.state is not WorkerState.CONNECTING:
            raise InvalidTransition(f"worker stayed {worker.state}")
    elif target is WorkerState.READY:
        worker.register("session", "host", datetime.now(UTC))
        if worker.state is not WorkerState.READY:
            raise InvalidTransition(f"a repeated registration leaves the worker {worker.state}")
    elif target is WorkerState.BUSY:
        worker.dispatch(worker.job_id)
    elif target is WorkerState.FAILED:
        before = worker.state
        worker.fail("lost")
        if before in (WorkerState.TERMINATING, WorkerState.TERMINATED):
            raise InvalidTransition("no failing once terminating")
    elif target is WorkerState.TERMINATING:
        raise InvalidTransition("no command leads there: only older servers recorded a removal under way")
    elif target is WorkerState.TERMINATED:
        worker.terminate("done")
    else:
        raise AssertionError(f"no command leads to {target}")


WORKER_MOVES = [
    (source, target)
    for source in WorkerState
    for target in WorkerState
    if source is not target and target is not WorkerState.CREATING
]


@pytest.mark.parametrize(("source", "target"), WORKER_MOVES, ids=[f"{s}->{t}" for s, t in WORKER_MOVES])
def test_worker_transition(source: WorkerState, target: WorkerState) -> None:
    worker = worker_in(source)
    if target in WORKER_TRANSITIONS[source]:
        move_worker(worker, target)
        assert worker.state is target
    else:
        with pytest.raises((InvalidTransition, Unauthenticated)):
            move_worker(worker, target)


def test_nothing_leads_back_to_creating() -> None:
    assert all(WorkerState.CREATING not in targets for targets in WORKER_TRANSITIONS.values())


def test_a_registration_token_opens_one_session_and_expires() -> None:
    worker = worker_in(WorkerState.CREATING)
    assert worker.register("s1", "host", datetime.now(UTC)) == "s1"
    registered = worker.version
    # A retry whose reply was lost gets the same session back, and changes nothing.
    assert worker.register("s2", "host", datetime.now(UTC)) == "s1"
    assert worker.version == registered
    worker.fail("lost")
    with pytest.raises(Unauthenticated, match="already used"):
        worker.register("s3", "host", datetime.now(UTC))
    late = worker_in(WorkerState.CREATING)
    with pytest.raises(Unauthenticated, match="expired"):
        late.register("s", "host", datetime.now(UTC) + timedelta(hours=1))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec(name="x", command="  ", timeout_seconds=5), "command must not be empty"),
        (JobSpec(name="x", command="true", timeout_seconds=-1), "timeout must be a positive"),
        (JobSpec(name="x", command="true", timeout_seconds=0), "timeout must be a positive"),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, env={"1BAD": "x"}),
            "environment variable name",
        ),
        (JobSpec(name="x", command="true", timeout_seconds=5, working_dir="rel"), "absolute path"),
        (
            JobSpec(name="x", command="sh", timeout_seconds=5, args=("-c", "x" * 70_000)),
            "argument 2 is 70000 bytes; the limit is 65536",
        ),
        (JobSpec(name="x", command="true", timeout_seconds=5, max_attempts=0), "max attempts"),
        (JobSpec(name="x", command="true", timeout_seconds=5, after={"3f2a9c1e": "maybe"}), "must be one of ok"),
        (JobSpec(name="x", command="true", timeout_seconds=5, after={" ": "ok"}), "is not a job id"),
        (JobSpec(name="x", command="true", timeout_seconds=5, after={"a\nb": "ok"}), "is not a job id"),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, after={str(uuid4()): "ok" for _ in range(1001)}),
            "1001 jobs to start after; the limit is 1000",
        ),
        (JobSpec(name="x", command="true", timeout_seconds=5, begin_at="tomorrow"), "begin must be an ISO 8601 time"),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, begin_at="2026-12-03T10:00:00"),
            "begin must be an ISO 8601 time with its zone",
        ),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, array_limit=-1),
            "an array's limit must be 0 .none. to 1000, got -1",
        ),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, array_limit=1001),
            "an array's limit must be 0 .none. to 1000",
        ),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, artifacts_exclude=("*.tmp",)),
            "excluding artifacts is for a job that keeps some",
        ),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, artifacts=("out",), artifacts_exclude=("../x",)),
            "artifact exclusion `../x`",
        ),
        (
            JobSpec(name="x", command="true", timeout_seconds=5, artifacts=("a",) * 40, artifacts_exclude=("b",) * 25),
            "65 artifact patterns; the limit is 64",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(spec: JobSpec, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Job.submit(spec, uuid4())


def test_an_image_pull_is_one_of_three_and_for_an_image() -> None:
    spec = JobSpec(name="x", command="true", timeout_seconds=5, image="app:1", image_pull="always")
    assert spec.problems() == []
    assert replace(spec, image_pull="sometimes").problems() == [
        "image pull must be one of always, missing, never, got `sometimes`"
    ]
    assert replace(spec, image="").problems() == ["an image pull is for a job in an image of its own (--image)"]


DIGEST = "@sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "valid"),
    [
        ("busybox", True),
        ("python:3.12-slim", True),
        ("registry.example.com:5000/team/tool_x/y:1.4", True),
        ("localhost:65535/tool", True),
        ("localhost:65536/tool", False),  # past the last port
        ("localhost:0/tool", False),
        ("localhost:08/tool", True),  # Docker reads it as 8
        (f"ghcr.io/org/app{DIGEST}", True),
        (f"app:2{DIGEST}", True),
        ("Python:3", False),  # upper case in the path
        ("not an/image", False),
        ("app:", False),
        (":latest", False),
        ("app/", False),
        ("app@sha256:short", False),
        ("app:" + "t" * 129, False),
        ("a/" * 300 + "b", False),  # past 512 characters
        ("a" * 255 + ":" + "t" * 128 + DIGEST, True),  # the longest name, tag and a digest
    ],
)
def test_a_jobs_image_is_an_image_reference(image: str, valid: bool) -> None:
    problems = JobSpec(name="x", command="true", timeout_seconds=5, image=image).problems()
    if valid:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith("image must be an image reference such as python:3.12-slim")


@pytest.mark.parametrize("image", ["a" * 256, "registry.example.com/" + "b" * 235 + ":1.4"])
def test_an_image_name_longer_than_docker_takes_is_refused_at_the_edge(image: str) -> None:
    """Docker refused it only when the worker was created: a provisioning failure
    ("repository name must not be more than 255 characters") where bad input is meant."""
    (problem,) = JobSpec(name="x", command="true", timeout_seconds=5, image=image).problems()
    assert problem.startswith("image name (its registry and path, before its tag) must be at most 255 characters")
    assert ", got 256: `" in problem


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("make test", "make test"),
        ("set -e\n  cd /src\r\n\tmake\n", "set -e cd /src make"),
        ("printf '\x1b[31mred'", "printf '?[31mred'"),
        ("x" * 100, "x" * 61 + "..."),
    ],
)
def test_a_job_without_a_name_is_named_after_its_command_on_one_line(command: str, name: str) -> None:
    assert name_for(command) == name
    JobSpec(name=name_for(command), command=command, timeout_seconds=5).validate()


def test_the_domain_package_does_no_io() -> None:
    """hodei/domain imports only pure parts of the standard library, eventsourcing.domain,
    cronsim (a cron expression's times: arithmetic) and itself. zoneinfo reads the system's
    time zone data once per zone, static data as a module's import is."""
    allowed_roots = {
        "cronsim",
        "zoneinfo",
        "__future__",
        "dataclasses",
        "datetime",
        "enum",
        "math",
        "re",
        "typing",
        "uuid",
        "collections",
    }
    for path in (Path(__file__).parent.parent / "hodei" / "domain").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                ok = (
                    name.split(".")[0] in allowed_roots
                    or name == "eventsourcing.domain"
                    or name.startswith("hodei.domain")
                    # urllib.parse: a webhook's URL read, never fetched
                    or name in {"hodei.errors", "urllib.parse"}
                )
                assert ok, f"{path.name} imports {name}"


def running_job(**spec: object) -> Job:
    job = Job.submit(JobSpec(name="t", command="false", timeout_seconds=5, **spec), uuid4())  # type: ignore[arg-type]
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    return job


def test_a_failed_command_with_retries_left_goes_back_to_the_queue_after_its_backoff() -> None:
    job = running_job(retries=2, retry_backoff_seconds=30)
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    job.finish(WORKER, JobState.FAILED, 3, "boom", now=now)
    assert (job.state, job.attempt, job.retries_used) == (JobState.PENDING, 2, 1)
    assert job.retry_at == now + timedelta(seconds=30)
    assert job.worker_id is None
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.time_out("no result", now=now)
    assert (job.state, job.attempt, job.retries_used) == (JobState.PENDING, 3, 2)
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.finish(WORKER, JobState.FAILED, 4, "boom again", now=now)
    assert (job.state, job.exit_code, job.error_message) == (JobState.FAILED, 4, "boom again")


def test_with_a_most_backoff_each_retrys_pause_doubles_up_to_it() -> None:
    """`--retry-backoff 10s --retry-backoff-max 35s`: 10, 20, 35, 35 s, timeouts too."""
    job = running_job(retries=4, retry_backoff_seconds=10, retry_backoff_max_seconds=35)
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    pauses = []
    for attempt in range(4):
        if attempt == 2:
            job.time_out("no result", now=now)
        else:
            job.finish(WORKER, JobState.FAILED, 3, "boom", now=now)
        assert job.retry_at is not None
        pauses.append((job.retry_at - now).total_seconds())
        job.assign(WORKER, PROVIDER, "docker")
        job.accept(WORKER)
    assert pauses == [10, 20, 35, 35]
    assert [running_job(retry_backoff_seconds=7).spec.retry_pause(used) for used in (0, 5)] == [7, 7]
    JobSpec(name="t", command="x", timeout_seconds=5, retry_backoff_seconds=1, retry_backoff_max_seconds=60).validate()


@pytest.mark.parametrize(
    ("backoff", "most"), [(0.0, 60.0), (30.0, 10.0), (1.0, math.inf), (1.0, 10 * 365 * 86400.0), (1.0, -1.0)]
)
def test_a_most_backoff_below_the_first_pause_or_without_one_is_refused(backoff: float, most: float) -> None:
    spec = JobSpec(
        name="t", command="true", timeout_seconds=5, retry_backoff_seconds=backoff, retry_backoff_max_seconds=most
    )
    with pytest.raises(InvalidInput, match="the most retry backoff must be from the retry backoff"):
        spec.validate()


def test_each_attempt_records_the_artifacts_its_own_worker_stored_until_its_output_expires() -> None:
    job = running_job(retries=1, artifacts=("out",))
    with pytest.raises(InvalidTransition, match="not assigned to worker other"):
        job.store_artifacts("other", [{"name": "a", "size_bytes": 1, "sha256": "x"}])
    job.collect_events()
    job.store_artifacts(WORKER, [])  # nothing stored: no event
    assert job.pending_events == [] and job.artifacts == []
    job.store_artifacts(WORKER, [{"name": "a", "size_bytes": 1, "sha256": "x", "ignored": True}])
    job.finish(WORKER, JobState.FAILED, 1, "boom")
    job.assign(WORKER, PROVIDER, "docker")
    job.store_artifacts(WORKER, [{"name": "a", "size_bytes": 2, "sha256": "y"}])
    job.finish(WORKER, JobState.SUCCEEDED, 0, None)
    assert job.artifacts == [
        {"name": "a", "size_bytes": 1, "sha256": "x", "attempt": 1},
        {"name": "a", "size_bytes": 2, "sha256": "y", "attempt": 2},
    ]
    phases = phases_of((str(job.id), type(e).__name__, e.timestamp, e.__dict__) for e in job.collect_events())
    assert [(p.attempt, p.detail) for p in phases if p.name == "artifacts_stored"] == [
        (1, "1 file, 1 byte"),
        (2, "1 file, 2 bytes"),
    ]
    job.expire_artifacts()
    assert job.artifacts == [] and job.artifacts_expired
    job.collect_events()
    job.expire_artifacts()  # none left: no event
    assert job.pending_events == []
    job.record_logs("file:///x.log", 10, 1)
    job.expire_logs()
    assert job.artifacts == [] and job.logs_expired


def cancelled_job() -> Job:
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    job.cancel("no longer needed")
    return job


def test_only_a_job_waiting_in_the_queue_is_held_and_a_held_one_is_never_admitted() -> None:
    """Slurm's hold: a second hold keeps the first's holder and reason; a release puts it
    back; an admitted or running job is refused (cancel it instead), as is a release of a
    job not held."""
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    job.select_provider(PROVIDER, "docker")
    job.hold("alice", "waiting for data")
    job.hold("bob", "another reason")
    assert (job.held_by, job.hold_reason) == ("alice", "waiting for data")
    assert [type(e).__name__ for e in job.collect_events()][-2:] == ["JobProviderSelected", "JobHeld"]
    with pytest.raises(InvalidTransition, match="held by alice"):
        job.admit()
    job.release()
    assert (job.held_by, job.hold_reason) == (None, "")
    with pytest.raises(InvalidTransition, match="not held"):
        job.release()
    job.admit()
    with pytest.raises(InvalidTransition, match="already starting"):
        job.hold("alice")
    with pytest.raises(InvalidTransition, match=r"is RUNNING: only a job waiting in the queue can be held \(cancel it"):
        running_job().hold("alice")
    with pytest.raises(InvalidTransition, match=r"is CANCELLED: only a job waiting in the queue can be held$"):
        cancelled_job().hold("alice")  # no use cancelling what ended
    held_then_cancelled = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    held_then_cancelled.hold("alice")
    held_then_cancelled.cancel("no longer needed")
    with pytest.raises(InvalidTransition, match="is CANCELLED and not held"):
        held_then_cancelled.release()


def test_a_queued_jobs_priority_changes_within_its_bounds_and_a_started_ones_never() -> None:
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5, priority=3), uuid4())
    job.prioritize(3)  # unchanged: no event
    job.prioritize(-7)
    assert job.spec.priority == -7
    assert [type(e).__name__ for e in job.collect_events()] == ["JobCreated", "JobPrioritized"]
    with pytest.raises(InvalidInput, match="priority must be between -1000 and 1000"):
        job.prioritize(1001)
    with pytest.raises(InvalidTransition, match="is RUNNING: only a job waiting in the queue changes its priority"):
        running_job().prioritize(1)


def test_a_queued_jobs_limits_change_within_their_bounds_and_a_started_ones_never() -> None:
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    job.change_limits(5.0, Resources())  # unchanged: no event
    job.change_limits(7200.0, Resources(cpu_cores=2.0, memory_bytes=2**30))
    assert (job.spec.timeout_seconds, job.spec.resources) == (7200.0, Resources(2.0, 2**30, 0))
    assert [type(e).__name__ for e in job.collect_events()] == ["JobCreated", "JobLimitsChanged"]
    for timeout, resources, said in (
        (-1.0, Resources(), "timeout must be a positive number of seconds"),
        (5.0, Resources(cpu_cores=-1), "cpu cores must be between 0"),
    ):
        with pytest.raises(InvalidInput, match=said):
            job.change_limits(timeout, resources)
    with pytest.raises(InvalidTransition, match="is RUNNING: only a job waiting in the queue changes its time limit"):
        running_job().change_limits(60.0, Resources())


def test_success_and_cancellation_are_never_retried() -> None:
    succeeded = running_job(retries=3)
    succeeded.finish(WORKER, JobState.SUCCEEDED, 0, None)
    assert succeeded.state is JobState.SUCCEEDED
    cancelled = running_job(retries=3)
    cancelled.cancel("by test")
    assert cancelled.state is JobState.CANCELLED


def test_a_cancelled_running_job_keeps_its_worker_until_it_reports() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    job = running_job()
    job.cancel("by test", grace=30, now=now)
    assert (job.state, job.stop_by) == (JobState.CANCELLED, now + timedelta(seconds=30))
    assert job.stop_pending
    assert job.grace_left(now + timedelta(seconds=10)) == 20 and job.grace_left(now + timedelta(minutes=1)) == 0
    job.finish(WORKER, JobState.CANCELLED, 143, "cancelled: by test")
    job.finish(WORKER, JobState.CANCELLED, 143, "cancelled: by test")  # a report sent again
    assert [type(e).__name__ for e in job.collect_events()][-2:] == ["JobStatusChanged", "JobStopped"]
    assert (job.state, job.exit_code, job.error_message) == (JobState.CANCELLED, None, "by test")
    assert not job.stop_pending
    with pytest.raises(InvalidTransition):
        job.finish(str(uuid4()), JobState.SUCCEEDED, 0, None)  # not its worker


def test_only_a_running_job_has_processes_to_stop() -> None:
    for state in (JobState.PENDING, JobState.ASSIGNED):
        job = job_in(state)
        job.cancel("by test", grace=30)
        assert job.stop_by is None and job.grace_left(datetime.now(UTC)) is None
    forced = running_job()
    forced.cancel("by test", grace=0)
    assert forced.grace_left(datetime.now(UTC)) == 0 and forced.stop_pending  # SIGKILL at once, then its report


def test_a_signal_is_for_a_running_jobs_attempt_by_its_name() -> None:
    job = running_job()
    job.signal("usr1")
    job.signal("SIGTERM")
    events = [vars(e) for e in job.collect_events() if type(e).__name__ == "JobSignalled"]
    signalled = [(e["signal"], e["attempt"]) for e in events]
    assert signalled == [("USR1", 1), ("TERM", 1)]
    assert job.state is JobState.RUNNING  # its processes go on, or not, as they handle it
    for state in (JobState.PENDING, JobState.ASSIGNED):
        with pytest.raises(InvalidTransition, match="only a running job's processes take a signal"):
            job_in(state).signal("HUP")
    for name in ("SEGV", "9", "", "SIG"):
        with pytest.raises(InvalidInput, match="a signal is one of HUP, INT"):
            check_signal(name)


def test_a_worker_that_gave_up_reports_its_job_cancelled_without_an_exit_code() -> None:
    job = running_job()
    job.finish(WORKER, JobState.CANCELLED, 143, "cancelled: the server is unreachable")
    assert (job.state, job.exit_code, job.stop_by) == (JobState.CANCELLED, None, None)


def test_retries_of_a_command_do_not_use_up_the_attempts_for_lost_workers() -> None:
    job = running_job(retries=1, max_attempts=2)
    job.finish(WORKER, JobState.FAILED, 1, None)
    assert job.attempt == 2
    assert job.can_retry  # one attempt used by a lost worker's requeue is still allowed
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.requeue("worker lost")
    assert job.attempt == 3
    assert not job.can_retry


def test_a_secrets_value_written_in_the_spec_is_refused_naming_where() -> None:
    """The spec is kept as written (JobCreated, for good); a secret only sealed. A value
    written out would be in the history in plain text: refused, with the way to say it."""
    value = "s3same-open"
    spec = JobSpec(
        name="deploy",
        command=f"curl -u admin:{value} https://example",
        args=("--token", value),
        env={"HEADER": f"Bearer {value}", "PLAIN": "s3same"},
        labels={"team": "data"},
        timeout_seconds=5,
    )
    assert spec.problems({"PW": value}) == []  # a spec stored, used again (a cron job's run): as it was
    with pytest.raises(InvalidInput) as refused:
        spec.refuse_written({"PW": value, "OTHER": "elsewhere"})
    assert refused.value.message == (
        "invalid job: the value of secret PW is written in the job's command and args[1] and env.HEADER: write $PW "
        "there instead (a job's secrets are in its environment; what is written there is kept as written, in the "
        "job's history)"
    )
    # A part of it, or the variable, is not the value.
    replace(spec, command='curl -u "admin:$PW"', args=(), env={"PLAIN": "s3same"}).refuse_written({"PW": value})


@pytest.mark.parametrize(("field", "value"), [("retries", -1), ("retries", 101), ("retry_backoff_seconds", -1.0)])
def test_retry_settings_out_of_bounds_are_refused(field: str, value: float) -> None:
    spec = JobSpec(name="t", command="true", timeout_seconds=5, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="retr"):
        spec.validate()


def test_phases_count_a_workers_events_for_its_own_attempt() -> None:
    """And a provider's choice that took a slot at once is both phases."""
    from hodei.domain.phases import phases_of

    at = datetime(2026, 11, 30, tzinfo=UTC)
    job, first, second = "job", "worker-1", "worker-2"
    events: list[tuple[str, str, datetime, dict[str, Any]]] = [
        (job, "JobCreated", at, {}),
        (job, "JobProviderSelected", at, {"admitted": True}),  # a slot taken at once
        (first, "WorkerCreated", at, {"attempt": 1}),
        (first, "WorkerRegistered", at, {}),
        (job, "JobAccepted", at, {}),
        (job, "JobStatusChanged", at, {"new_state": "RUNNING"}),
        (job, "JobStatusChanged", at, {"new_state": "PENDING"}),
        (job, "JobAdmitted", at, {}),  # after its backoff, from the queue
        (second, "WorkerCreated", at, {"attempt": 2}),
        (first, "WorkerTerminated", at, {}),  # attempt 1's worker goes after attempt 2 began
        (second, "WorkerRegistered", at, {}),
        (job, "JobStatusChanged", at, {"new_state": "SUCCEEDED"}),
        (second, "WorkerTerminated", at, {}),
    ]
    assert [(p.name, p.attempt) for p in phases_of(events)] == [
        ("queued", 1),
        ("provider_chosen", 1),
        ("admitted", 1),
        ("registered", 1),
        ("started", 1),
        ("requeued", 1),
        ("admitted", 2),
        ("worker_released", 1),
        ("registered", 2),
        ("finished", 2),
        ("worker_released", 2),
    ]


def test_phases_say_what_each_attempt_that_ran_used() -> None:
    """From the worker's report (JobStatusChanged version 5); an older event, or a worker
    that could not measure, says nothing."""
    from hodei.domain.phases import latest_usage, phases_of

    at = datetime(2026, 11, 30, tzinfo=UTC)
    first = {"cpu_seconds": 1.25, "peak_memory_bytes": 3 * 2**20}
    events: list[tuple[str, str, datetime, dict[str, Any]]] = [
        ("job", "JobStatusChanged", at, {"new_state": "PENDING", "usage": first}),
        ("job", "JobStatusChanged", at, {"new_state": "PENDING"}),  # version 4
        ("job", "JobStatusChanged", at, {"new_state": "FAILED", "usage": {"cpu_seconds": 0.5}}),
    ]
    phases = phases_of(events)
    assert [(p.name, p.attempt, p.cpu_seconds, p.peak_memory_bytes) for p in phases] == [
        ("requeued", 1, 1.25, 3 * 2**20),
        ("requeued", 2, None, None),
        ("finished", 3, 0.5, None),
    ]
    # A cancelled job's processes report theirs when they stopped (JobStopped version 2).
    cancelled: list[tuple[str, str, datetime, dict[str, Any]]] = [
        ("job", "JobStatusChanged", at, {"new_state": "CANCELLED"}),
        ("job", "JobStopped", at, {"exit_code": 143, "usage": {"cpu_seconds": 2.0, "peak_memory_bytes": 2**20}}),
    ]
    assert [(p.name, p.detail, p.cpu_seconds) for p in phases_of(cancelled)] == [
        ("finished", "", None),
        ("stopped", "exited with code 143", 2.0),
    ]
    shown = [
        {"attempt": p.attempt, "cpu_seconds": p.cpu_seconds, "peak_memory_bytes": p.peak_memory_bytes} for p in phases
    ]
    assert latest_usage(shown) == "0.50 s CPU (attempt 3)"
    assert latest_usage(shown[:2]) == "1.25 s CPU, 3.0 MiB peak memory (attempt 1)"
    assert latest_usage(shown[1:2]) == ""


def test_phases_say_why_each_attempt_ended() -> None:
    from hodei.domain.phases import phases_of

    at = datetime(2026, 11, 30, tzinfo=UTC)
    retried = "attempt 1 failed (exited with code 3); retry 1 of 1"
    events: list[tuple[str, str, datetime, dict[str, Any]]] = [
        ("job", "JobAccepted", at, {}),
        ("job", "JobStatusChanged", at, {"new_state": "PENDING", "reason": retried}),
        ("job", "JobAccepted", at, {}),
        ("job", "JobStatusChanged", at, {"new_state": "CANCELLED", "reason": "cancelled by alice"}),
        ("job", "JobStopped", at, {"worker_id": "w", "exit_code": 143}),
        ("job", "JobLogsPersisted", at, {}),
    ]
    assert [(p.name, p.attempt, p.detail) for p in phases_of(events)] == [
        ("started", 1, ""),
        ("requeued", 1, retried),
        ("started", 2, ""),
        ("finished", 2, "cancelled by alice"),
        ("stopped", 2, "exited with code 143"),
        ("logs_stored", 2, ""),
    ]


def test_a_cancelled_jobs_processes_are_stopping_until_they_stopped_or_their_worker_went() -> None:
    from hodei.domain.phases import processes_stopping

    ran = [("started", 1)]
    assert processes_stopping("CANCELLED", 1, ran)
    assert not processes_stopping("CANCELLED", 1, [*ran, ("stopped", 1)])
    assert not processes_stopping("CANCELLED", 1, [*ran, ("worker_released", 1)])
    assert not processes_stopping("CANCELLED", 2, ran)  # cancelled before its second attempt ran
    assert not processes_stopping("SUCCEEDED", 1, ran)


def test_a_job_waits_in_the_queue_until_its_attempt_is_admitted() -> None:
    from hodei.domain.phases import waits_in_queue

    assert waits_in_queue("PENDING", 1, [("queued", 1), ("provider_chosen", 1)])
    assert not waits_in_queue("PENDING", 1, [("queued", 1), ("admitted", 1)])  # its worker is being made
    assert waits_in_queue("PENDING", 2, [("admitted", 1), ("requeued", 1)])  # its next attempt waits again
    assert not waits_in_queue("RUNNING", 1, [("queued", 1)])


@pytest.mark.parametrize(
    ("condition", "state", "met"),
    [
        ("ok", JobState.SUCCEEDED, True),
        ("ok", JobState.FAILED, False),
        ("ok", JobState.TIMEOUT, False),
        ("ok", JobState.CANCELLED, False),
        ("notok", JobState.SUCCEEDED, False),
        ("notok", JobState.FAILED, True),
        ("notok", JobState.TIMEOUT, True),
        ("notok", JobState.CANCELLED, True),
        ("any", JobState.SUCCEEDED, True),
        ("any", JobState.CANCELLED, True),
        ("ok", JobState.RUNNING, None),
        ("notok", JobState.PENDING, None),
        ("any", JobState.ASSIGNED, None),
    ],
)
def test_a_job_started_after_another_waits_for_it_to_end_as_asked(
    condition: str, state: JobState, met: bool | None
) -> None:
    """Slurm's afterok, afternotok and afterany: None while the other job has not ended,
    False once it ended otherwise (the job would never start)."""
    assert after_met(condition, state) is met


def test_a_begin_time_is_kept_in_utc_in_one_form() -> None:
    """PostgreSQL's timestamptz reads what is stored (the queue compares it with now());
    Python reads ISO forms it does not, such as the basic one."""
    assert canonical_time("2026-12-03T11:30:00+01:00") == "2026-12-03T10:30:00+00:00"
    assert canonical_time("20261203T103000Z") == "2026-12-03T10:30:00+00:00"
    assert canonical_time("soon") == "soon"  # for validate to name
    spec = JobSpec(name="x", command="true", timeout_seconds=5, begin_at="2026-12-03T10:30:00+00:00")
    assert spec.begins == datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
    assert JobSpec(name="x", command="true", timeout_seconds=5).begins is None


def test_a_label_selector_reads_kubectls_four_terms() -> None:
    selector = LabelSelector.of([" team = blue ", "tier!=db", "owner", "!temp"], {"app": "x"})
    assert selector == LabelSelector({"app": "x", "team": "blue"}, (("tier", "db"),), ("owner",), ("temp",))
    assert LabelSelector.of(["team="]).equal == {"team": ""}  # the empty value, as kubectl's
    assert LabelSelector.of([]) == LabelSelector()
    for wrong in ("", "=x", "!", "!a=b", "a!b", "!=x"):
        with pytest.raises(InvalidInput, match="expected KEY=VALUE, KEY!=VALUE, KEY or !KEY"):
            LabelSelector.of([wrong])


def test_a_job_of_an_array_is_told_its_index_and_carries_the_arrays_label() -> None:
    spec = JobSpec(name="sweep", command="true", timeout_seconds=5, env={"HODEI_ARRAY_INDEX": "mine", "A": "1"})
    element = array_element(spec, "array-1", 7, 10)
    assert element.name == "sweep[7]" and element.labels == {"hodei.io/array": "array-1"}
    assert element.env == {"A": "1", "HODEI_ARRAY_INDEX": "7", "HODEI_ARRAY_ID": "array-1", "HODEI_ARRAY_COUNT": "10"}
    assert array_problems([0, 1, 2]) == []
    assert array_problems(list(range(1001))) == ["an array of 1001 jobs; the limit is 1000"]
    assert array_problems([1, 1]) == ["an array index is given twice"]
    assert array_problems([-1]) == ["array indices must be 0 to 2147483647"]


def test_a_pool_is_named_sized_resized_and_deleted_and_a_job_names_one_by_its_rules() -> None:
    pool = Pool.create("db-loaders", 4)
    assert pool.id == pool_id("db-loaders")
    pool.resize(4)  # unchanged: no event
    pool.resize(0)  # its jobs wait
    pool.delete()
    with pytest.raises(InvalidTransition, match="already deleted"):
        pool.delete()
    pool.resize(4)  # a deleted pool's name sized anew
    assert (pool.size, pool.deleted) == (4, False)
    events = [(type(e).__name__, getattr(e, "size", None)) for e in pool.collect_events()]
    assert events == [("PoolCreated", 4), ("PoolResized", 0), ("PoolDeleted", None), ("PoolResized", 4)]
    for name, size, said in [
        ("", 1, "a pool's name is 1 to 63"),
        ("with space", 1, "a pool's name is 1 to 63"),
        ("db", -1, "a pool's size is 0 (its jobs wait) to 100000, got -1"),
        ("db", 100_001, "a pool's size is 0"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(said)):
            Pool.create(name, size)
    assert JobSpec(name="t", command="true", timeout_seconds=5, pool="db").problems() == []
    assert "a pool's name is 1 to 63" in JobSpec(name="t", command="true", timeout_seconds=5, pool="-x").problems()[0]


def test_a_submitters_limit_is_set_changed_lifted_and_deleted() -> None:
    limit = SubmitterLimit.create("alice@example.org", 4)
    assert limit.id == limit_id("alice@example.org") != limit_id(DEFAULT)
    assert (limit.jobs, limit.submitted) == (4, INHERITED)  # what it leaves unsaid is `*`'s
    limit.change(4, INHERITED)  # unchanged: no event
    limit.change(None, 100)  # no limit of jobs at once, whatever `*` says; 100 not ended at most
    limit.delete()
    assert (limit.jobs, limit.submitted) == (INHERITED, INHERITED)
    with pytest.raises(InvalidTransition, match="already deleted"):
        limit.delete()
    limit.change(None, INHERITED)  # a deleted limit set anew, even to none
    assert (limit.jobs, limit.submitted, limit.deleted) == (None, INHERITED, False)
    events = [
        (type(e).__name__, getattr(e, "jobs", "-"), getattr(e, "submitted", "-"), getattr(e, "inherits", "-"))
        for e in limit.collect_events()
    ]
    assert events == [
        ("SubmitterLimitSet", 4, None, ["submitted"]),
        ("SubmitterLimitChanged", None, 100, []),
        ("SubmitterLimitDeleted", "-", "-", "-"),
        ("SubmitterLimitChanged", None, None, ["submitted"]),
    ]
    assert SubmitterLimit.create(DEFAULT, 0, None).jobs == 0  # every submitter's jobs wait
    for jobs, submitted, said in [
        (-2, None, "0 (its jobs wait) to 100000 jobs at once, got -2"),
        (None, -1, "at most 0 (none submitted) to 1000000, got -1"),
        (None, 1_000_001, "at most 0 (none submitted) to 1000000, got 1000001"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(said)):
            limit.change(jobs, submitted)
    with pytest.raises(InvalidInput, match=re.escape("* is every submitter's limit: it has none to take its jobs")):
        SubmitterLimit.create(DEFAULT, INHERITED, 5)


def test_the_servers_bounds_give_defaults_and_refuse_past_the_most() -> None:
    """HODEI_DEFAULT_CPUS and the rest, as a LimitRange's defaultRequest and max: what a
    job asks for none of is given; what it asks for stays; past a most is refused, saying
    which setting; a default past its most is refused when the server starts."""
    bounds = JobBounds(default_cpus=0.5, max_cpus=2, default_memory_bytes=64 * 2**20, max_disk_bytes=10 * 2**20)
    given = bounds.apply(JobSpec(name="t", command="true", timeout_seconds=60))
    assert given.resources == Resources(cpu_cores=0.5, memory_bytes=64 * 2**20, disk_bytes=10 * 2**20)
    asked = JobSpec(
        name="t",
        command="true",
        timeout_seconds=60,
        resources=Resources(cpu_cores=2, memory_bytes=2**30, disk_bytes=2**20),
    )
    assert bounds.apply(asked) == asked  # no most for memory: a GiB is allowed
    plain = JobSpec(name="t", command="true", timeout_seconds=60)
    assert JobBounds().apply(plain) is plain
    with pytest.raises(
        InvalidInput, match=r"CPU of 2.5 cores is past this server's most for a job, 2 cores \(HODEI_MAX_CPUS\)"
    ):
        bounds.apply(replace(plain, resources=Resources(cpu_cores=2.5)))
    with pytest.raises(
        InvalidInput, match=r"memory of 2147483648 bytes .* 1073741824 bytes \(HODEI_MAX_MEMORY_BYTES\)"
    ):
        JobBounds(max_memory_bytes=2**30).apply(replace(plain, resources=Resources(memory_bytes=2**31)))
    with pytest.raises(
        InvalidInput, match=r"HODEI_DEFAULT_MEMORY_BYTES \(2048\) is past HODEI_MAX_MEMORY_BYTES \(1024\)"
    ):
        JobBounds(default_memory_bytes=2048, max_memory_bytes=1024)
