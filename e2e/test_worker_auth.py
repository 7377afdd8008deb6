"""Worker credentials (invariant 8): a single-use, expiring token bound to the worker
and its job; a stream bound to the worker's identity; no reporting on another job.
The test plays a worker against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hodei._proto import artifacts_pb2, common_pb2, jobs_pb2, jobs_pb2_grpc, worker_pb2, worker_pb2_grpc
from hodei.domain.worker import Worker
from hodei.store.app import HodeiStore
from hodei.store.db import open_pool
from hodei.testing import ServerProcess, eventually, query
from hodei.tokens import TokenSigner

pytestmark = pytest.mark.e2e


@pytest.fixture
def silent_server(fresh_database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """Its workers never start an agent: the test registers in their place (so each holds
    one of the local provider's starts until it does)."""
    env = {
        "HODEI_LOCAL_WORKER_COMMAND": "sleep 600",
        "HODEI_REGISTRATION_TIMEOUT": "120",
        "HODEI_LOCAL_MAX_STARTING": "16",
    }
    with ServerProcess(fresh_database_url, tmp_path, env) as server:
        yield server


def submit(server: ServerProcess, command: str = "echo hi") -> str:
    with grpc.insecure_channel(server.address) as channel:
        spec = common_pb2.JobSpec(name="auth", command=command, timeout_seconds=60, provider="local")
        return str(jobs_pb2_grpc.JobExecutionServiceStub(channel).QueueJob(jobs_pb2.QueueJobRequest(spec=spec)).job_id)


def credentials(url: str, job_id: str) -> tuple[Worker, str]:
    """The job's worker and the registration token the server handed its agent."""
    rows = eventually(
        lambda: query(url, "SELECT id FROM workers WHERE job_id = %s AND state = 'CONNECTING'", (job_id,)), 30
    )
    pool = open_pool(url, max_size=1)
    try:
        worker = HodeiStore(pool).load(Worker, rows[0][0])
        token = TokenSigner.from_database(pool).registration_token(str(worker.id), worker.job_id, worker.token_nonce)
    finally:
        pool.close()
    return worker, token


def register(
    stub: worker_pb2_grpc.WorkerAgentServiceStub, worker: Worker, token: str, job_id: str | None = None
) -> str:
    request = worker_pb2.RegisterRequest(worker_id=str(worker.id), job_id=job_id or worker.job_id, token=token)
    return stub.Register(request, timeout=10).session_token


def test_a_token_opens_one_session_only_for_its_worker_and_job(
    silent_server: ServerProcess, fresh_database_url: str
) -> None:
    job_id = submit(silent_server)
    other_job = submit(silent_server)
    worker, token = credentials(fresh_database_url, job_id)
    with grpc.insecure_channel(silent_server.address) as channel:
        stub = worker_pb2_grpc.WorkerAgentServiceStub(channel)
        # A job id that is not one (the flow read compares it with uuid columns) is refused too.
        for wrong_token, wrong_job in (("0" * 64, None), (token, other_job), (token, "not-a-job")):
            with pytest.raises(grpc.RpcError) as refused:
                register(stub, worker, wrong_token, wrong_job)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        session = register(stub, worker, token)
        assert session
        # Presented again (a reply lost to a dying server), the token gets the same session:
        # never a second one.
        assert register(stub, worker, token) == session


def test_the_stream_is_bound_to_the_worker_and_its_job(silent_server: ServerProcess, fresh_database_url: str) -> None:
    job_id = submit(silent_server)
    victim = submit(silent_server)
    worker, token = credentials(fresh_database_url, job_id)
    with grpc.insecure_channel(silent_server.address) as channel:
        stub = worker_pb2_grpc.WorkerAgentServiceStub(channel)
        session = register(stub, worker, token)
        wrong = (("x-hodei-worker-id", str(worker.id)), ("x-hodei-session", "forged"))
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Connect(iter([worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat())]), metadata=wrong))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # With its own session, the worker tries to report on another job: the stream ends
        # and nothing reaches that job.
        metadata = (("x-hodei-worker-id", str(worker.id)), ("x-hodei-session", session))
        intrusion = worker_pb2.WorkerMessage(
            result=worker_pb2.JobResult(job_id=victim, outcome=worker_pb2.JOB_OUTCOME_EXITED, exit_code=0)
        )
        replies = list(stub.Connect(iter([intrusion]), metadata=metadata, timeout=10))
        assert not any(r.WhichOneof("kind") == "result_ack" for r in replies)
    assert query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (victim,)) in (
        [("PENDING",)],
        [("ASSIGNED",)],
    )


def test_a_worker_stores_and_fetches_artifacts_only_for_its_own_job(
    silent_server: ServerProcess, fresh_database_url: str
) -> None:
    """Its session uploads files of its own job only, at names inside it, and fetches the
    artifacts of no job its own does not start after (with --fetch-artifacts)."""
    job_id = submit(silent_server)
    victim = submit(silent_server)
    worker, token = credentials(fresh_database_url, job_id)

    def upload(job: str, name: str) -> grpc.StatusCode:
        header = worker_pb2.ArtifactHeader(job_id=job, name=name, size_bytes=1)
        pieces = iter([worker_pb2.ArtifactUpload(header=header), worker_pb2.ArtifactUpload(data=b"x")])
        try:
            stub.UploadArtifact(pieces, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with grpc.insecure_channel(silent_server.address) as channel:
        stub = worker_pb2_grpc.WorkerAgentServiceStub(channel)
        metadata = (("x-hodei-worker-id", str(worker.id)), ("x-hodei-session", register(stub, worker, token)))
        assert upload(victim, "a.txt") == grpc.StatusCode.UNAUTHENTICATED
        assert upload(job_id, "../../escape.txt") == grpc.StatusCode.INVALID_ARGUMENT
        assert upload(job_id, "a.txt") == grpc.StatusCode.OK
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.FetchArtifact(artifacts_pb2.ReadArtifactRequest(job_id=victim, name="a.txt"), metadata=metadata))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may fetch artifacts only of the jobs it starts after" in str(refused.value.details())
    stored = sorted(str(path.relative_to(silent_server.log_dir)) for path in silent_server.log_dir.rglob("*.txt"))
    assert stored == [f"artifacts/{job_id}/1/a.txt"]
