"""Caller identity and roles over real gRPC: every method of every service, called by
nobody, by a worker credential and by a token of each role; tokens made with the real
`hodei-server token create`; revocation and expiry; who did what, in the events."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import pkgutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

import hodei._proto
from hodei._proto import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    worker_pb2,
)
from hodei.roles import RULES, Gate, Role, rule_of
from hodei.testing import BIN, Cli, ServerProcess, eventually, hodei_server, query

pytestmark = pytest.mark.e2e
# Every generated module of the API (a service added later is walked too).
SERVICE_MODULES = tuple(
    importlib.import_module(f"hodei._proto.{module.name}")
    for module in pkgutil.iter_modules(hodei._proto.__path__)
    if module.name.endswith("_pb2")
)


def methods() -> list[tuple[str, MethodDescriptor]]:
    return [
        (f"/{service.full_name}/{method.name}", method)
        for module in SERVICE_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def create_token(database_url: str, name: str, role: str, *extra: str) -> str:
    """`hodei-server token create`, as an operator runs it: the token alone on stdout."""
    result = subprocess.run(
        [str(BIN / "hodei-server"), "token", "create", "--name", name, "--role", role, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("hodei_")
    assert "shown only once" in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tokens(database_url: str) -> dict[str, str]:
    return {
        "read": create_token(database_url, "reader", "read"),
        "submit": create_token(database_url, "alice", "submit"),
        "other": create_token(database_url, "bob", "submit", "--expires", "30d"),
        "operate": create_token(database_url, "ops", "operate"),
        "admin": create_token(database_url, "root-admin", "admin"),
    }


@pytest.fixture(scope="module")
def server(
    database_url: str, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # The agents' stand-ins never register (tests register in their place): each would hold
    # one of the local provider's starts until its registration timeout.
    env = {
        "HODEI_LOCAL_WORKER_COMMAND": "sleep 600",
        "HODEI_REGISTRATION_TIMEOUT": "300",
        "HODEI_LOCAL_MAX_STARTING": "16",
    }
    with ServerProcess(database_url, tmp_path_factory.mktemp("access"), env) as process:
        yield process


def call(channel: grpc.Channel, path: str, method: MethodDescriptor, token: str | None) -> grpc.StatusCode:
    """Calls the method with an empty request; the status it ends with."""
    request = GetMessageClass(method.input_type)()
    response_class = GetMessageClass(method.output_type)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    kwargs: dict[str, Any] = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.client_streaming and method.server_streaming:
            list(
                itertools.islice(
                    channel.stream_stream(path, **kwargs)(iter([request]), metadata=metadata, timeout=5), 1
                )
            )
        elif method.server_streaming:
            list(itertools.islice(channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=5), 1))
        else:
            channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_method_of_every_service_has_an_access_rule() -> None:
    missing = [path for path, _ in methods() if path not in RULES]
    assert missing == []
    assert rule_of("/hodei.jobs.JobExecutionService/NoSuchMethod") is None
    assert rule_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is Gate.OPEN


@pytest.mark.parametrize(("path", "method"), methods(), ids=[path for path, _ in methods()])
def test_each_method_admits_exactly_the_roles_of_its_rule(
    server: ServerProcess, tokens: dict[str, str], path: str, method: MethodDescriptor
) -> None:
    rule = RULES[path]
    denied = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    with server.channel() as channel:
        anonymous = call(channel, path, method, None)
        forged = call(channel, path, method, "hodei_not-a-real-token")
        by_role = {role: call(channel, path, method, tokens[role.value]) for role in Role}
    assert anonymous == grpc.StatusCode.UNAUTHENTICATED
    assert forged == grpc.StatusCode.UNAUTHENTICATED
    if rule is Gate.WORKER:
        # API tokens mean nothing to worker methods: only a worker's own credential does.
        assert set(by_role.values()) == {grpc.StatusCode.UNAUTHENTICATED}
        return
    assert isinstance(rule, Role)
    for role, code in by_role.items():
        if role.allows(rule):
            assert code not in denied, (role, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, code)


def submit(server: ServerProcess, token: str, command: str = "true", hold: bool = False) -> str:
    with server.channel() as channel:
        spec = common_pb2.JobSpec(name="access", command=command, timeout_seconds=60, provider="local")
        response = jobs_pb2_grpc.JobExecutionServiceStub(channel).QueueJob(
            jobs_pb2.QueueJobRequest(spec=spec, hold=hold), metadata=(("authorization", f"Bearer {token}"),)
        )
        return str(response.job_id)


def as_token(server: ServerProcess, token: str, method: str, request: Any) -> grpc.StatusCode:
    """A JobExecutionService call with ``token``: OK, or the code it was refused with."""
    with server.channel() as channel:
        try:
            getattr(jobs_pb2_grpc.JobExecutionServiceStub(channel), method)(
                request, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def cancel(server: ServerProcess, token: str, job_id: str) -> grpc.StatusCode:
    return as_token(server, token, "CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id))


def retry(server: ServerProcess, token: str, job_id: str) -> grpc.StatusCode:
    return as_token(server, token, "RetryJob", jobs_pb2.RetryJobRequest(job_id=job_id))


def prioritize(server: ServerProcess, token: str, job_id: str, priority: int) -> grpc.StatusCode:
    return as_token(server, token, "UpdateJob", jobs_pb2.UpdateJobRequest(job_id=job_id, priority=priority))


def release(server: ServerProcess, token: str, job_id: str) -> grpc.StatusCode:
    return as_token(server, token, "ReleaseJob", jobs_pb2.GetJobRequest(job_id=job_id))


def test_roles_in_practice_and_who_did_what(server: ServerProcess, database_url: str, tokens: dict[str, str]) -> None:
    reader = server.cli("--token", tokens["read"], "job", "run", "--provider", "local", "--command", "true")
    assert reader.returncode != 0
    assert "token `reader` has the read role" in reader.stderr and "PERMISSION_DENIED" in reader.stderr
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as disabled:
            providers_pb2_grpc.ProviderManagementServiceStub(channel).DisableProvider(
                providers_pb2.GetProviderRequest(provider="local"),
                metadata=(("authorization", f"Bearer {tokens['read']}"),),
            )
        assert disabled.value.code() == grpc.StatusCode.PERMISSION_DENIED

    job = submit(server, tokens["submit"])
    # A command in a job (`job exec`): its submitter's or the operate role's, and then only
    # while it runs (this one waits for a worker that never registers).
    ran = jobs_pb2.ExecJobRequest(job_id=job, argv=["id"])
    assert as_token(server, tokens["read"], "ExecJob", ran) == grpc.StatusCode.PERMISSION_DENIED
    assert as_token(server, tokens["other"], "ExecJob", ran) == grpc.StatusCode.PERMISSION_DENIED
    assert as_token(server, tokens["submit"], "ExecJob", ran) == grpc.StatusCode.FAILED_PRECONDITION
    assert as_token(server, tokens["operate"], "ExecJob", ran) == grpc.StatusCode.FAILED_PRECONDITION
    assert cancel(server, tokens["read"], job) == grpc.StatusCode.PERMISSION_DENIED
    assert cancel(server, tokens["other"], job) == grpc.StatusCode.PERMISSION_DENIED
    assert cancel(server, tokens["submit"], job) == grpc.StatusCode.OK
    someone_elses = submit(server, tokens["other"])
    assert cancel(server, tokens["operate"], someone_elses) == grpc.StatusCode.OK
    # Retrying: a submitter its own finished jobs, the operate role anyone's.
    assert retry(server, tokens["submit"], someone_elses) == grpc.StatusCode.PERMISSION_DENIED
    assert retry(server, tokens["read"], job) == grpc.StatusCode.PERMISSION_DENIED
    assert retry(server, tokens["submit"], job) == grpc.StatusCode.OK
    assert retry(server, tokens["operate"], someone_elses) == grpc.StatusCode.OK
    # Holding and releasing: a submitter its own queued jobs, the operate role anyone's.
    held = submit(server, tokens["submit"], hold=True)
    assert as_token(server, tokens["read"], "HoldJob", jobs_pb2.HoldJobRequest(job_id=held)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert release(server, tokens["other"], held) == grpc.StatusCode.PERMISSION_DENIED
    # Its priority while it waits: its submitter lowers it, only the operate role raises it.
    assert prioritize(server, tokens["submit"], held, -1) == grpc.StatusCode.OK
    assert prioritize(server, tokens["submit"], held, 1) == grpc.StatusCode.PERMISSION_DENIED
    assert prioritize(server, tokens["other"], held, -2) == grpc.StatusCode.PERMISSION_DENIED
    assert prioritize(server, tokens["operate"], held, 5) == grpc.StatusCode.OK
    assert prioritize(server, tokens["read"], held, 5000) == grpc.StatusCode.PERMISSION_DENIED  # the rule first
    assert prioritize(server, tokens["submit"], held, 5000) == grpc.StatusCode.INVALID_ARGUMENT
    assert query(database_url, "SELECT priority FROM jobs WHERE id = %s", (held,)) == [(5,)]
    assert release(server, tokens["submit"], held) == grpc.StatusCode.OK
    held_by_other = submit(server, tokens["other"], hold=True)
    assert release(server, tokens["operate"], held_by_other) == grpc.StatusCode.OK
    assert query(
        database_url,
        "SELECT event_type, actor, payload->>'by' FROM domain_events WHERE aggregate_id = ANY(%s::text[]) "
        "AND event_type IN ('JobHeld', 'JobReleased') ORDER BY position",
        ([held, held_by_other],),
    ) == [
        ("JobHeld", "alice", "alice"),
        ("JobReleased", "alice", None),
        ("JobHeld", "bob", "bob"),
        ("JobReleased", "ops", None),
    ]

    assert query(
        database_url, "SELECT actor FROM domain_events WHERE aggregate_id = %s AND event_type = 'JobCreated'", (job,)
    ) == [("alice",)]
    shown = server.cli("--token", tokens["read"], "job", "get", "--id", someone_elses, check=True).stdout
    assert "Submitted by: bob" in shown and "Cancelled by: ops" in shown
    # What the platform does by itself is the system's doing.
    actors = {
        row[0]
        for row in query(database_url, "SELECT DISTINCT actor FROM domain_events WHERE correlation_id = %s", (job,))
    }
    assert actors <= {"alice", "system"}, actors


def test_a_job_list_of_one_submitters_jobs_or_the_callers_own(server: ServerProcess, tokens: dict[str, str]) -> None:
    """Slurm's `squeue -u alice` and `squeue --me`: `job list --submitter NAME` and `--mine`."""
    mine = submit(server, tokens["submit"], hold=True)
    theirs = submit(server, tokens["other"], hold=True)

    def listed(token: str, *args: str) -> list[str]:
        shown = server.cli("--token", token, "-o", "json", "job", "list", "--limit", "1000", *args, check=True)
        return [job["id"] for job in json.loads(shown.stdout)["jobs"]]

    assert mine in listed(tokens["submit"], "--mine") and theirs not in listed(tokens["submit"], "--mine")
    assert theirs in listed(tokens["submit"], "--submitter", "bob") and mine not in listed(tokens["read"], "-u", "bob")
    assert {mine, theirs} <= set(listed(tokens["read"]))
    for args, said in [
        (("--submitter", "bob", "--mine"), "not allowed with argument"),
        (("--submitter", "two words"), "a submitter is a token's name"),
    ]:
        refused = server.cli("--token", tokens["read"], "job", "list", *args)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    for job_id in (mine, theirs):
        server.cli("--token", tokens["operate"], "job", "cancel", job_id, check=True)


def test_an_idempotency_key_is_each_submitters_own(server: ServerProcess, tokens: dict[str, str]) -> None:
    """Two submitters' keys never meet: bob's `nightly` is not alice's, whatever each asks."""

    def run(token: str) -> str:
        ran = server.cli(
            "--token", token, "job", "run", "-p", "local", "-c", "true", "--hold", "--idempotency-key", "nightly"
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.strip()

    alices, bobs = run(tokens["submit"]), run(tokens["other"])
    assert alices != bobs and run(tokens["submit"]) == alices and run(tokens["other"]) == bobs
    submitters = dict(
        query(server.database_url, "SELECT id::text, actor FROM jobs WHERE id::text IN (%s, %s)", (alices, bobs))
    )
    assert submitters == {alices: "alice", bobs: "bob"}
    for job_id in (alices, bobs):
        server.cli("--token", tokens["operate"], "job", "cancel", job_id, check=True)


def test_a_submitter_cannot_put_a_job_in_anothers_cron_job_pipeline_or_job(
    server: ServerProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    """Labels under hodei.io/ are the server's: set by hand, bob's `sleep` labelled
    `hodei.io/cron=nightly` was alice's cron job's newest run (and held back its times under
    `--concurrency forbid`), `hodei.io/workflow` put it in another's pipeline, and
    `hodei.io/parent` said a job submitted it. Refused from every way in (a job, several, an
    array, a cron job), naming the label; nothing is written."""
    url = server.database_url
    written = "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM domain_events WHERE event_type LIKE 'Cron%%')"
    [(jobs_before, crons_before)] = query(url, written)
    bob = ("--token", tokens["other"])
    for label in (
        "hodei.io/cron=nightly",
        "hodei.io/workflow=0b0e9a9c-35a4-4b55-9d5f-7a3b0f0a0e3e",
        "hodei.io/parent=x",
    ):
        for how in (("job", "run", "-c", "sleep 300"), ("job", "run", "-c", "true", "--array", "1-2")):
            refused = server.cli(*bob, *how, "-p", "local", "-l", label)
            assert refused.returncode == 2, refused.stderr
            assert f"label `{label.split('=')[0]}`: labels under hodei.io/ are the server's own" in refused.stderr
    pipeline = tmp_path / "forged-pipeline.yaml"
    pipeline.write_text(
        "name: a\ncommand: 'true'\nprovider: local\n---\n"
        "name: b\ncommand: 'true'\nprovider: local\nafter: {a: ok}\nlabels: {hodei.io/array: x, team: ops}\n"
    )
    refused = server.cli(*bob, "job", "run", "--file", str(pipeline))
    assert refused.returncode == 2 and "label `hodei.io/array`: labels under hodei.io/" in refused.stderr
    refused = server.cli(*bob, "cron", "create", "forged", "--schedule", "@hourly", "-p", "local", "-c", "true",
                         "-l", "hodei.io/cron=nightly")  # fmt: skip
    assert refused.returncode == 2 and "label `hodei.io/cron`" in refused.stderr
    assert query(url, written) == [(jobs_before, crons_before)]
    ran = server.cli(*bob, "job", "run", "-p", "local", "-c", "true", "--hold", "-l", "hodei.io.team=ops", check=True)
    server.cli("--token", tokens["operate"], "job", "cancel", ran.stdout.strip(), check=True)


def test_revoked_and_expired_tokens_are_refused_at_once(
    server: ServerProcess, database_url: str, tokens: dict[str, str]
) -> None:
    doomed = create_token(database_url, "doomed", "admin")
    assert server.cli("--token", doomed, "whoami", check=True).stdout.strip() == "doomed (admin)"
    revoked = server.cli("--token", tokens["admin"], "token", "revoke", "doomed")
    assert revoked.returncode == 0, revoked.stderr
    refused = server.cli("--token", doomed, "whoami")
    assert refused.returncode != 0
    assert "the API token `doomed` was revoked" in refused.stderr and "UNAUTHENTICATED" in refused.stderr
    assert "by root-admin (UNAUTHENTICATED)" in refused.stderr  # who revoked it: whom to ask
    again = server.cli("--token", tokens["admin"], "token", "revoke", "doomed", check=True)
    assert again.returncode == 0
    listed = json.loads(server.cli("--token", tokens["admin"], "token", "list", "-o", "json", check=True).stdout)
    (shown,) = [token for token in listed if token["name"] == "doomed"]
    assert shown["revoked_by"] == "root-admin" and shown["revoked_at"]  # the first revocation's
    from_host = create_token(database_url, "from-host", "read")
    subprocess.run(
        [str(BIN / "hodei-server"), "token", "revoke", "from-host"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert "was revoked at" in server.cli("--token", from_host, "whoami").stderr
    assert query(database_url, "SELECT revoked_by FROM hodei.api_tokens WHERE name = 'from-host'") == [
        ("hodei-server",)
    ]

    brief = create_token(database_url, "brief", "read", "--expires", "1s")
    eventually(lambda: "expired" in server.cli("--token", brief, "whoami").stderr, 10, 0.2, "the token to expire")


def test_token_list_says_when_each_token_was_last_used(
    server: ServerProcess, database_url: str, tokens: dict[str, str]
) -> None:
    """An operator looking for tokens to revoke sees which are still in use: each server
    writes down every few seconds the tokens its calls used."""
    used, _ = create_token(database_url, "used-once", "read"), create_token(database_url, "never-used", "read")

    def listed() -> dict[str, Any]:
        shown = server.cli("--token", tokens["admin"], "token", "list", "-o", "json", check=True).stdout
        return {token["name"]: token for token in json.loads(shown)}

    assert listed()["used-once"]["last_used_at"] is None
    ((before,),) = query(database_url, "SELECT now()")
    server.cli("--token", used, "whoami", check=True)
    last = eventually(lambda: listed()["used-once"]["last_used_at"], 30, 0.5, "its use to be written down")
    assert datetime.fromisoformat(last.replace("Z", "+00:00")) >= before
    assert listed()["never-used"]["last_used_at"] is None
    table = server.cli("--token", tokens["admin"], "token", "list", check=True).stdout
    assert "LAST USED" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:] if line.strip()}
    assert rows["never-used"].count("never") == 2 and rows["used-once"].count("never") == 1  # expires; used
    # The server's own list, piped, as the CLI's: a tab-separated row a token, nothing cut.
    own = hodei_server(database_url, "token", "list")
    assert own.returncode == 0, own.stderr
    header, *lines = own.stdout.splitlines()
    columns = ["NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "REVOKED", "CREATED BY", "REVOKED BY"]
    assert header.split("\t") == columns
    by_name = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert by_name["never-used"][1:2] + by_name["never-used"][3:5] == ["read", "never", "never"]
    assert len(by_name["never-used"][2]) == len("2026-12-05 02:30")  # a whole time, not `2026-1…`


def test_a_revoked_or_expired_token_ends_the_streams_it_opened(fresh_database_url: str, tmp_path: Path) -> None:
    """A token is looked up when a call begins: a `job logs --follow`, a `job watch` or a
    console's log page opened before its token was revoked read on for as long as the
    job ran. Each now ends within seconds, refused as a new call would be; the streams of
    other tokens go on."""
    admin = create_token(fresh_database_url, "admin", "admin")
    doomed = create_token(fresh_database_url, "doomed", "read")
    with ServerProcess(fresh_database_url, tmp_path, http=True, token=admin) as server:
        ran = server.cli("job", "run", "--provider", "local", "--command", "echo started; sleep 120", check=True)
        job_id = ran.stdout.strip()
        reader = Cli(server.address, ("--token", doomed))
        follow, watch = reader.spawn("job", "logs", "--follow", job_id), reader.spawn("job", "watch", job_id)
        kept = server.spawn("job", "logs", "--follow", job_id)
        for process in (follow, watch, kept):  # each stream open: its first line printed
            assert process.stdout is not None and process.stdout.readline()
        bearer = {"Authorization": f"Bearer {doomed}"}
        page = requests.get(f"{server.http_url}/jobs/{job_id}/logs", headers=bearer, stream=True, timeout=60)
        lines = page.iter_lines()
        assert b'"text": "started"' in next(line for line in lines if line.startswith(b"data:"))

        server.cli("token", "revoke", "doomed", check=True)
        for process in (follow, watch):
            _, said = process.communicate(timeout=60)
            assert process.returncode != 0
            assert "UNAUTHENTICATED" in said and "the API token `doomed` was revoked at" in said, said
        rest: list[bytes] = []
        with contextlib.suppress(requests.exceptions.ChunkedEncodingError):
            rest += lines
        assert b"event: end" not in rest  # cut: the page reloads, and is sent to sign in
        assert kept.poll() is None
        assert "stream(s): the API token `doomed` was revoked" in server.logs()

        brief = create_token(fresh_database_url, "brief", "read", "--expires", "8s")
        watch = Cli(server.address, ("--token", brief)).spawn("job", "watch", job_id)
        assert watch.stdout is not None and watch.stdout.readline()
        _, said = watch.communicate(timeout=60)
        assert "the API token `brief` expired at" in said, said
        assert kept.poll() is None
        kept.kill()
        kept.communicate()
        server.cli("job", "cancel", job_id, check=True)


def test_tokens_through_the_api_and_the_cli_settings(
    server: ServerProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    submitter = server.cli("--token", tokens["submit"], "token", "create", "--name", "x", "--role", "admin")
    assert submitter.returncode != 0 and "PERMISSION_DENIED" in submitter.stderr
    made = server.cli("--token", tokens["admin"], "token", "create", "--name", "ci-bot", "--role", "submit")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("hodei_") and len(made.stdout.splitlines()) == 1
    listed = server.cli("--token", tokens["admin"], "token", "list", "-o", "json", check=True).stdout
    assert '"ci-bot"' in listed and "hodei_" not in listed  # names and roles, never a token

    nothing = server.cli("whoami")
    assert nothing.returncode != 0
    assert "requires an API token: set HODEI_TOKEN, pass --token" in nothing.stderr

    config = tmp_path / "config.toml"
    config.write_text(f'server = "{server.address}"\ntoken = "{made.stdout.strip()}"\n')
    config.chmod(0o644)
    env = {**os.environ, "HODEI_CONFIG": str(config)}
    loose = subprocess.run([str(BIN / "hodei-jobs-cli"), "whoami"], capture_output=True, text=True, env=env, timeout=30)
    assert loose.returncode != 0 and "chmod 600" in loose.stderr
    config.chmod(0o600)
    tight = subprocess.run([str(BIN / "hodei-jobs-cli"), "whoami"], capture_output=True, text=True, env=env, timeout=30)
    assert tight.stdout.strip() == "ci-bot (submit)", tight.stderr
    by_env = subprocess.run(
        [str(BIN / "hodei-jobs-cli"), "--server", server.address, "whoami"],
        capture_output=True,
        text=True,
        env={**os.environ, "HODEI_CONFIG": "/nonexistent", "HODEI_TOKEN": tokens["operate"]},
        timeout=30,
    )
    assert by_env.stdout.strip() == "ops (operate)", by_env.stderr


def test_the_health_service_stays_open(server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with server.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_worker_credential_calls_nothing_else_and_a_token_opens_no_worker_stream(
    server: ServerProcess, database_url: str, tokens: dict[str, str]
) -> None:
    from e2e.test_worker_auth import credentials, register
    from hodei._proto import worker_pb2_grpc

    job_id = submit(server, tokens["submit"])
    worker, registration = credentials(database_url, job_id)
    with server.channel() as channel:
        session = register(worker_pb2_grpc.WorkerAgentServiceStub(channel), worker, registration)
        for credential in (registration, session):
            codes = {
                call(channel, path, method, credential) for path, method in methods() if isinstance(RULES[path], Role)
            }
            assert codes == {grpc.StatusCode.UNAUTHENTICATED}
        stream = worker_pb2_grpc.WorkerAgentServiceStub(channel).Connect(
            iter([worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat())]),
            metadata=(("authorization", f"Bearer {tokens['admin']}"), ("x-hodei-worker-id", str(worker.id))),
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(stream)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
