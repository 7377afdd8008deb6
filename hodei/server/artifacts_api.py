"""hodei.jobs.ArtifactService: the files jobs left (``--artifact``), listed and read.

Which artifacts a job has is its events' (``JobArtifactsStored``, cleared by its output's
retention); their bytes are the artifact store's (hodei.artifacts). Reading them is the
read role's, as reading the job's log is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc

from hodei._proto import artifacts_pb2, artifacts_pb2_grpc
from hodei.artifacts import ArtifactStore
from hodei.domain.job import Job
from hodei.errors import InvalidInput, NotFound
from hodei.server.edge import rpc
from hodei.store.app import HodeiStore
from hodei.store.readmodels import ReadModels


def artifact_message(artifact: dict[str, Any]) -> artifacts_pb2.Artifact:
    return artifacts_pb2.Artifact(
        name=artifact["name"],
        size_bytes=artifact["size_bytes"],
        sha256=artifact["sha256"],
        attempt=artifact["attempt"],
    )


def chosen(job: Job, name: str, attempt: int) -> dict[str, Any]:
    """The artifact ``name`` of ``attempt`` (0: the latest attempt that stored one so named)."""
    if attempt < 0:
        raise InvalidInput("attempt must not be negative")
    found = [a for a in job.artifacts if a["name"] == name and attempt in (0, a["attempt"])]
    if not found:
        which = f" of attempt {attempt}" if attempt else ""
        gone = " (its artifacts were deleted by retention)" if _expired(job) else ""
        raise NotFound(f"job {job.id} has no artifact {name!r}{which}{gone}: `job artifacts {job.id}` lists them")
    return found[-1]


def _expired(job: Job) -> bool:
    """Its artifacts were deleted: their own time passed, or its log's (with them)."""
    return job.artifacts_expired or job.logs_expired


class ArtifactService(artifacts_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, store: HodeiStore, reads: ReadModels, artifacts: ArtifactStore) -> None:
        self.store = store
        self.reads = reads
        self.artifacts = artifacts

    def _job(self, text: str) -> Job:
        job_id = self.reads.resolve("job", text)
        job = self.store.find(Job, job_id)
        if job is None:
            raise NotFound(f"job {text} not found")
        return job

    @rpc
    def ListArtifacts(
        self, request: artifacts_pb2.ListArtifactsRequest, context: grpc.ServicerContext
    ) -> artifacts_pb2.ListArtifactsResponse:
        job = self._job(request.job_id)
        return artifacts_pb2.ListArtifactsResponse(
            job_id=str(job.id),
            artifacts=[artifact_message(a) for a in job.artifacts],
            expired=_expired(job),
            attempts=job.attempt,
        )

    @rpc
    async def ReadArtifact(
        self, request: artifacts_pb2.ReadArtifactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[artifacts_pb2.ArtifactPiece]:
        job = await asyncio.to_thread(self._job, request.job_id)
        async for piece in artifact_pieces(self.artifacts, job, request.name, request.attempt):
            yield piece


async def artifact_pieces(
    artifacts: ArtifactStore, job: Job, name: str, attempt: int
) -> AsyncIterator[artifacts_pb2.ArtifactPiece]:
    """An artifact of ``job`` as ReadArtifact sends it: its description, then its bytes."""
    artifact = chosen(job, name, attempt)
    pieces: Generator[bytes, None, None] = artifacts.read(str(job.id), artifact["attempt"], artifact["name"])
    try:
        # Opened before the description goes: a missing file is an error, not an empty one.
        piece = await asyncio.to_thread(next, pieces, b"")
        yield artifacts_pb2.ArtifactPiece(artifact=artifact_message(artifact))
        while piece:
            yield artifacts_pb2.ArtifactPiece(data=piece)
            piece = await asyncio.to_thread(next, pieces, b"")
    finally:
        pieces.close()
