"""Limits at the edge: every over-limit field is refused with INVALID_ARGUMENT naming it,
nothing is written, and a thousand such requests at once leave the server serving."""

from __future__ import annotations

import importlib
import pkgutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from e2e.test_access import create_token
from hodei import _proto
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc, logs_pb2, logs_pb2_grpc
from hodei.domain.spec import LIMITS
from hodei.server.edge import MESSAGE_BYTES
from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("limits"), {"HODEI_KILL_GRACE": "1"}) as process:
        yield process


def written(url: str) -> tuple[int, int]:
    events = query(url, "SELECT count(*) FROM domain_events")[0][0]
    keys = query(url, "SELECT count(*) FROM hodei.job_keys")[0][0]
    return events, keys


def spec(**fields: object) -> common_pb2.JobSpec:
    values: dict[str, object] = {"name": "limits", "command": "true", "timeout_seconds": 30, "provider": "local"}
    values.update(fields)
    return common_pb2.JobSpec(**values)  # type: ignore[arg-type]


OVER_LIMIT = [
    (spec(name="bad\x01name"), {}, "name must not contain control characters"),
    (spec(command="x" * MB), {}, f"command is {MB} bytes; the limit is {LIMITS.command_bytes}"),
    (spec(env={f"V{i}": "y" * 60_000 for i in range(50)}), {}, f"the limit is {LIMITS.exec_bytes}"),
    (spec(args=["a"] * 2000), {}, f"2000 arguments; the limit is {LIMITS.args}"),
    (spec(resources=common_pb2.ResourceRequirements(cpu_cores=1e308)), {}, "cpu cores must be between 0"),
    (spec(resources=common_pb2.ResourceRequirements(memory_bytes=2**62)), {}, "memory must be between 0"),
    (spec(resources=common_pb2.ResourceRequirements(disk_bytes=-1)), {}, "disk must be between 0 (no limit) and"),
    (spec(labels={f"k{i}": "v" for i in range(10_000)}), {}, f"10000 labels; the limit is {LIMITS.labels}"),
    (spec(labels={"team": "a\x1bb"}), {}, "label team must be at most 255 characters without control"),
    (spec(labels={"bad key!": "v"}), {}, "label key `bad key!` must be at most 63"),
    (spec(timeout_seconds=1e-9), {}, "timeout must be at least 1 second"),
    (spec(timeout_seconds=float("nan")), {}, "timeout must be a positive number"),
    (spec(working_dir="/tmp/a\nb"), {}, "working directory must be at most 4096 characters without control"),
    (spec(env={"A\x00": "v"}), {}, "a key of spec.env must not contain NUL (\\x00) characters"),
    (spec(labels={"team": "a\x00b"}), {}, "spec.labels['team'] must not contain NUL (\\x00) characters"),
    (spec(max_attempts=11), {}, "max attempts must be between 1 and 10"),
    (spec(provider="x" * 100), {}, "provider must be a provider name or id"),
    (spec(), {"K": "abc"}, "secret K is shorter than 4 characters"),
    (spec(), {"BAD-NAME": "abcdef"}, "secret name `BAD-NAME` is not valid"),
    (spec(), {f"S{i}": "abcdef" for i in range(100)}, f"100 secrets; the limit is {LIMITS.secrets}"),
    (spec(env={"API": "x"}), {"API": "abcdef"}, "API given both as --env and as --secret"),
    (spec(env={"HODEI_JOB_ID": "x"}), {}, "environment variable HODEI_JOB_ID is set by the platform"),
    (spec(), {"HODEI_WORKER_ID": "abcdef"}, "secret HODEI_WORKER_ID is set by the platform (its worker id)"),
    (spec(env={"HODEI_ATTEMPT": "1"}), {}, "environment variable HODEI_ATTEMPT is set by the platform (its attempt)"),
    (spec(artifacts=["a"] * 100), {}, f"100 artifact patterns; the limit is {LIMITS.artifact_patterns}"),
    (spec(artifacts=["x" * 2000]), {}, "must be at most 1024 characters without control characters"),
    (spec(artifacts=["a/\nb"]), {}, "must be at most 1024 characters without control characters"),
    (spec(artifacts=["/etc/shadow"]), {}, "artifact `/etc/shadow` must be relative to the working directory"),
    (spec(artifacts=["../x"]), {}, "artifact `../x` must stay inside the working directory"),
    (spec(artifacts=["a"], artifacts_expire_seconds=-1), {}, "artifacts expire after 0 (with the log) to"),
    (spec(artifacts=["a"], artifacts_expire_seconds=1e12), {}, "artifacts expire after 0 (with the log) to"),
    (spec(artifacts_expire_seconds=60), {}, "an expiry of artifacts is for a job that keeps some (--artifact)"),
]


@pytest.mark.parametrize(("job", "secrets", "message"), OVER_LIMIT, ids=[m for _, _, m in OVER_LIMIT])
def test_an_over_limit_field_is_refused_naming_it_and_nothing_is_written(
    server: ServerProcess, database_url: str, job: common_pb2.JobSpec, secrets: dict[str, str], message: str
) -> None:
    before = written(database_url)
    with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        jobs_pb2_grpc.JobExecutionServiceStub(channel).QueueJob(
            jobs_pb2.QueueJobRequest(spec=job, secrets=secrets), timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert message in (refused.value.details() or "")
    assert written(database_url) == before


# Ids fixed, not drawn: pytest-xdist's processes must collect the same tests.
UNKNOWN = "3f1c2a9e-5b7d-4c1e-9a2f-6d8e0b4c7a15"


@pytest.mark.parametrize(
    "job_id",
    [f"urn:uuid:{UNKNOWN}", "{" + UNKNOWN + "}", "x" * 10_000],
    ids=["urn", "braces", "10k-chars"],
)
def test_odd_job_ids_are_not_found_not_internal_errors(server: ServerProcess, job_id: str) -> None:
    with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        jobs_pb2_grpc.JobExecutionServiceStub(channel).GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def _api_methods() -> list[MethodDescriptor]:
    """Every method of every service the server has that takes one request (streams of
    requests are their methods' to read), by name: xdist's processes collect alike."""
    methods = []
    for module in pkgutil.iter_modules(_proto.__path__):
        if module.name.endswith("_pb2"):
            for service in importlib.import_module(f"hodei._proto.{module.name}").DESCRIPTOR.services_by_name.values():
                methods += [
                    method
                    for method in service.methods
                    if not method.client_streaming and any(_text_fields(GetMessageClass(method.input_type)))
                ]
    return sorted(methods, key=lambda method: method.full_name)


def _text_fields(message: type[Message], depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Paths to each string field of a message, a map of strings, or in the messages it holds."""
    for field in message.DESCRIPTOR.fields:
        inner: Any = field.message_type
        text_map = inner is not None and inner.GetOptions().map_entry
        if field.type == FieldDescriptor.TYPE_STRING or (
            text_map and inner.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
        ):
            yield (field,)
        elif inner is not None and not text_map and depth < 3 and not inner.full_name.startswith("google.protobuf."):
            yield from ((field, *path) for path in _text_fields(GetMessageClass(inner), depth + 1))


def _holding(message: Message, path: tuple[Any, ...], text: str) -> None:
    field, *rest = path
    if rest:
        inner = getattr(message, field.name)
        _holding(inner.add() if field.is_repeated else inner, tuple(rest), text)
    elif field.message_type is not None:  # a map of strings: its value
        getattr(message, field.name)["k"] = text
    elif field.is_repeated:
        getattr(message, field.name).append(text)
    else:
        setattr(message, field.name, text)


def each_text_holding(
    server: ServerProcess, method: MethodDescriptor, text: str
) -> Iterator[tuple[str, grpc.StatusCode, str]]:
    """Calls ``method`` once for each of its request's texts, that one holding ``text``:
    (the field, the status, its message)."""
    request_type = GetMessageClass(method.input_type)
    with server.channel() as channel:
        name = f"/{method.containing_service.full_name}/{method.name}"
        call: Any = (channel.unary_stream if method.server_streaming else channel.unary_unary)(
            name, request_serializer=request_type.SerializeToString, response_deserializer=None
        )
        for path in _text_fields(request_type):
            request = request_type()
            _holding(request, path, text)
            try:
                answer = call(request, timeout=30)
                if method.server_streaming:
                    next(iter(answer), None)
                status, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                status, details = exc.code(), exc.details() or ""
            yield ".".join(field.name for field in path), status, details


API_METHODS = _api_methods()


@pytest.mark.parametrize("method", API_METHODS, ids=lambda method: method.full_name)
def test_a_nul_in_any_text_of_any_request_is_refused_naming_its_field(
    server: ServerProcess, database_url: str, method: MethodDescriptor
) -> None:
    """PostgreSQL stores no NUL (text, jsonb): a job list filtered by such a name, a pool
    looked up by one, a token revoked by one... failed as internal errors."""
    before = written(database_url)
    for where, status, details in each_text_holding(server, method, "a\x00b"):
        assert status == grpc.StatusCode.INVALID_ARGUMENT, (where, details)
        assert "must not contain NUL (\\x00) characters" in details, where
        assert where.rpartition(".")[2] in details, where
    assert written(database_url) == before


@pytest.mark.parametrize("method", API_METHODS, ids=lambda method: method.full_name)
def test_a_huge_text_anywhere_gets_an_answer_a_client_can_read(
    server: ServerProcess, database_url: str, method: MethodDescriptor
) -> None:
    """A refusal quoting what it refused (an unknown provider of 100,000 characters) was
    too big for the status trailer: the client read RESOURCE_EXHAUSTED, "received metadata
    size exceeds hard limit". Past every field's limit: nothing is written."""
    before = written(database_url)
    for where, status, details in each_text_holding(server, method, "x" * 100_000):
        assert status not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (where, details)
        assert "metadata size" not in details, where
        assert len(details.encode()) <= MESSAGE_BYTES + 100, (where, len(details))
    assert written(database_url) == before


def test_the_cli_refuses_over_limit_input_before_sending(server: ServerProcess, database_url: str) -> None:
    before = written(database_url)
    for flags, message in (
        (("--cpu", "1e308"), "cpu cores must be between 0"),
        (("--timeout", "1e-9"), "timeout must be at least 1 second"),
        (("--memory", str(2**62)), "memory must be between 0"),
        (("--memory", "9" * 400), "--memory `99999999999999999999999999999999…` is past any size"),  # was int(inf)
        (("--disk", "9" * 400), "--disk `99999999999999999999999999999999…` is past any size: at most"),
        (("--disk", "ten"), "malformed --disk `ten`: use bytes or a unit such as 512Mi or 1G"),
        (("--begin", "9" * 30 + "d"), "a duration from now that stays within the years 1 to 9999"),  # was a traceback
        (("--secret", "API_KEY=ab"), "secret API_KEY is shorter than 4 characters"),
        (("--secret", "NOEQUALS"), "malformed --secret `NOEQUALS…`"),
    ):
        result = server.cli("job", "run", "--provider", "local", "--command", "true", *flags)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
        assert result.stdout == ""
    assert written(database_url) == before


def test_an_unusable_working_dir_fails_the_job_naming_it(server: ServerProcess, database_url: str) -> None:
    locked = Path(tempfile.mkdtemp(prefix="hodei-locked-"))  # mode 0700, root's: not the job's user's
    cases = [
        ("/proc/hodei-no-such-dir", "cannot create working directory /proc/hodei-no-such-dir"),
        (str(locked), f"cannot use working directory {locked}: Permission denied"),
    ]
    try:
        for working_dir, message in cases:
            result = server.cli(
                "job", "run", "--provider", "local", "--command", "pwd", "--working-dir", working_dir, "--wait"
            )
            job_id = result.stdout.strip()
            wait_settled(database_url, job_id)
            state, error = query(database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))[0]
            assert (state, message in error) == ("FAILED", True), error
    finally:
        locked.rmdir()


def test_a_thousand_over_limit_requests_at_once_leave_the_server_serving(
    server: ServerProcess, database_url: str
) -> None:
    before = written(database_url)
    bad = [spec(timeout_seconds=1e-9), spec(name="\x01"), spec(resources=common_pb2.ResourceRequirements(cpu_cores=-1))]
    with server.channel() as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        futures = [stub.QueueJob.future(jobs_pb2.QueueJobRequest(spec=bad[i % 3]), timeout=120) for i in range(1000)]
        codes = set()
        for future in futures:
            try:
                future.result()
                codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.add(exc.code())
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert written(database_url) == before
    ok = server.cli("job", "run", "--provider", "local", "--command", "echo still here", "--timeout", "30", "--wait")
    assert ok.returncode == 0, ok.stderr


def test_past_its_streams_limit_a_follower_waits_for_room_and_workers_still_connect(
    database_url: str, tmp_path: Path
) -> None:
    """``HODEI_MAX_STREAMS`` bounds what API callers hold open (followers, watchers): one
    more is refused, saying so, and the CLI asks again until there is room; workers'
    streams are not counted, so jobs go on running past it."""
    with ServerProcess(database_url, tmp_path, {"HODEI_MAX_STREAMS": "2"}) as server, server.channel() as channel:
        job_id = server.cli("job", "run", "-p", "local", "-c", "echo first; sleep 60", check=True).stdout.strip()
        logs = logs_pb2_grpc.LogStreamServiceStub(channel)
        request = logs_pb2.SubscribeLogsRequest(job_id=job_id, follow=True)
        followers = [logs.SubscribeLogs(request) for _ in range(2)]
        for follower in followers:
            assert next(follower).entries[0].line == "first"
        with pytest.raises(grpc.RpcError) as refused:
            next(logs.SubscribeLogs(request))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "as many streams to API callers as it may (2, HODEI_MAX_STREAMS" in str(refused.value.details())
        other = server.cli("job", "run", "-p", "local", "-c", "echo past the limit", check=True).stdout.strip()
        done = "SELECT state FROM jobs WHERE id = %s AND state = 'SUCCEEDED'"
        ran = eventually(lambda: query(database_url, done, (other,)), 60, what="the job run past the limit")
        assert ran == [("SUCCEEDED",)]  # its worker's stream was not refused
        assert server.cli("job", "logs", job_id, check=True).stdout == "first\n"  # a read ends: not limited
        waiting = server.spawn("job", "logs", job_id, "--follow")
        try:
            assert waiting.stdout is not None
            with ThreadPoolExecutor(1) as reader:
                printed = reader.submit(waiting.stdout.readline)
                time.sleep(1)
                assert not printed.done()  # refused, asking again
                followers[0].cancel()  # room for it
                assert printed.result(timeout=30) == "first\n"
            server.cli("job", "cancel", job_id, "--force", check=True)
            out, err = waiting.communicate(timeout=60)
        finally:
            waiting.kill()
        assert waiting.returncode == 0, (out, err)  # its --follow ended with the job


def test_one_api_token_holds_at_most_its_share_of_the_streams(fresh_database_url: str, tmp_path: Path) -> None:
    """``HODEI_MAX_STREAMS_PER_TOKEN``: one client following everything cannot take every
    stream of the server; another token's follower is still served, and the token's own
    next one once it ends one."""
    env = {"HODEI_MAX_STREAMS_PER_TOKEN": "2"}
    greedy, other = (create_token(fresh_database_url, name, "read") for name in ("greedy", "other"))
    admin = create_token(fresh_database_url, "admin", "admin")
    with ServerProcess(fresh_database_url, tmp_path, env, token=admin) as server, server.channel() as channel:
        job_id = server.cli("job", "run", "-p", "local", "-c", "echo first; sleep 60", check=True).stdout.strip()
        logs = logs_pb2_grpc.LogStreamServiceStub(channel)
        request = logs_pb2.SubscribeLogsRequest(job_id=job_id, follow=True)

        def follow(token: str) -> Any:
            follower = logs.SubscribeLogs(request, metadata=(("authorization", f"Bearer {token}"),))
            assert next(follower).entries[0].line == "first"
            return follower

        held = [follow(greedy), follow(greedy)]
        with pytest.raises(grpc.RpcError) as refused:
            follow(greedy)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        said = str(refused.value.details())
        assert "the API token `greedy` already holds as many streams on this server as one token may (2" in said
        assert "HODEI_MAX_STREAMS_PER_TOKEN" in said
        others = [follow(other), follow(other)]  # another token's share is its own
        held.pop().cancel()
        held.append(eventually(lambda: _followed(follow, greedy), 30, what="room for the token's next stream"))
        for follower in held + others:
            follower.cancel()
        server.cli("job", "cancel", job_id, "--force", check=True)


def _followed(follow: Any, token: str) -> Any:
    """A follower of ``token``'s, or None while it has no room yet (its ended stream is
    given back when the server hears of the cancel)."""
    try:
        return follow(token)
    except grpc.RpcError as exc:
        if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return None


def test_the_servers_most_disk_is_every_new_jobs_limit_and_more_is_refused(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """HODEI_MAX_DISK_BYTES as a LimitRange's max and default: a job asking for none is
    given it, one asking for more is refused with nothing written, and it holds for every
    job made after it is set: a retry of a job from before, a cron job's run."""
    url = fresh_database_url
    with ServerProcess(url, tmp_path / "before") as before:
        unlimited = before.cli("job", "run", "-c", "true", "--wait", check=True).stdout.strip()
    most = {"HODEI_MAX_DISK_BYTES": str(10 * 1024**2)}
    with ServerProcess(url, tmp_path / "after", most) as server:

        def resources(job_id: str) -> list[str]:
            shown = server.cli("job", "get", job_id, check=True).stdout.splitlines()
            return [line for line in shown if line.startswith("Resources:")]

        assert resources(unlimited) == []
        given = server.cli("job", "run", "-c", "true", "--wait", check=True).stdout.strip()
        assert resources(given) == ["Resources: 10.0 MiB disk"]
        assert resources(server.cli("job", "run", "-c", "true", "--disk", "1Mi", check=True).stdout.strip()) == [
            "Resources: 1.0 MiB disk"
        ]
        before_refusals = written(url)
        refused = server.cli("job", "run", "-c", "true", "--disk", "20Mi")
        assert refused.returncode != 0 and refused.stdout == ""
        said = "disk of 20971520 bytes is past this server's most for a job, 10485760 bytes (HODEI_MAX_DISK_BYTES)"
        assert said in refused.stderr, refused.stderr
        cron = server.cli("cron", "create", "big", "--schedule", "@daily", "-c", "true", "--disk", "20Mi")
        assert cron.returncode != 0 and said in cron.stderr, cron.stderr
        assert written(url) == before_refusals
        retried = server.cli("job", "retry", unlimited, "--wait", check=True).stdout.strip()
        assert resources(retried) == ["Resources: 10.0 MiB disk"]
        server.cli("cron", "create", "nightly", "--schedule", "@daily", "-c", "true", check=True)
        ran = server.cli("cron", "run", "nightly", "--wait", check=True).stdout.split()[0]
        assert resources(ran) == ["Resources: 10.0 MiB disk"]
