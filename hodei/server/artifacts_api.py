"""hodei.jobs.ArtifactService: the files jobs left (``--artifact``), listed and read.

Which artifacts a job has is its events' (``JobArtifactsStored``, cleared by its output's
retention); their bytes are the artifact store's (hodei.artifacts). Reading them is the
read role's, as reading the job's log is. Beside them, the files jobs start with
(``UploadInput``, hodei.inputs): the submit role's, uploaded before the job is submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc

from hodei._proto import artifacts_pb2, artifacts_pb2_grpc
from hodei.artifacts import ArtifactStore, Stored, Upload
from hodei.domain.job import Job
from hodei.errors import InvalidInput, NotFound
from hodei.inputs import InputStore
from hodei.server.access import caller
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
    def __init__(self, store: HodeiStore, reads: ReadModels, artifacts: ArtifactStore, inputs: InputStore) -> None:
        self.store = store
        self.reads = reads
        self.artifacts = artifacts
        self.inputs = inputs

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

    @rpc
    async def UploadInput(
        self, request_iterator: AsyncIterator[artifacts_pb2.InputPiece], context: grpc.aio.ServicerContext[Any, Any]
    ) -> artifacts_pb2.UploadedInput:
        sizes: list[int] = []
        who = caller().name

        def begin(piece: artifacts_pb2.InputPiece) -> Upload:
            sizes.append(piece.size_bytes)
            return self.inputs.begin(piece.size_bytes, who)

        def keep(upload: Upload) -> Stored:
            if upload.size != sizes[0]:
                raise InvalidInput(f"the input archive was {upload.size} bytes, not the {sizes[0]} its upload said")
            return self.inputs.keep(upload)

        stored = await received(request_iterator, "size_bytes", begin, keep)
        return artifacts_pb2.UploadedInput(sha256=stored.sha256, size_bytes=stored.size_bytes)

    @rpc
    def FindInput(
        self, request: artifacts_pb2.UploadedInput, context: grpc.ServicerContext
    ) -> artifacts_pb2.UploadedInput:
        self.inputs.find(request.sha256, request.size_bytes, caller().name)
        return request


async def received(
    pieces: AsyncIterator[Any], first: str, begin: Callable[[Any], Upload], keep: Callable[[Upload], Stored]
) -> Stored:
    """A file's upload (UploadArtifact's, UploadInput's): its first piece (of kind
    ``first``) begins it (``begin``, in a thread: it may refuse it), then its data, each
    piece hashed and written in a thread while the next is received (one at a time, in
    order, as the agent's fetch does: ``hodei_worker.artifacts.write_pieces``), then
    ``keep`` finishes it. On any error, nothing of it is left."""
    upload: Upload | None = None
    writing: asyncio.Future[None] | None = None
    try:
        async for piece in pieces:
            kind = piece.WhichOneof("kind")
            if upload is None:
                if kind != first:
                    raise InvalidInput(f"an upload begins with its {first}")
                upload = await asyncio.to_thread(begin, piece)
            elif kind == "data":
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(upload.write, piece.data))
            else:
                raise InvalidInput(f"an upload gives its {first} once")
        if upload is None:
            raise InvalidInput(f"an upload begins with its {first}")
        if writing is not None:
            await writing
        return await asyncio.to_thread(keep, upload)
    except BaseException:
        if writing is not None:  # its thread goes on with the file: done before it goes
            with contextlib.suppress(BaseException):
                await writing
        if upload is not None:
            upload.discard()
        raise


async def artifact_pieces(
    artifacts: ArtifactStore, job: Job, name: str, attempt: int
) -> AsyncIterator[artifacts_pb2.ArtifactPiece]:
    """An artifact of ``job`` as ReadArtifact sends it: its description, then its bytes."""
    artifact = chosen(job, name, attempt)
    stored = artifacts.read(str(job.id), artifact["attempt"], artifact["name"])
    async for piece in described_pieces(artifact_message(artifact), stored):
        yield piece


async def described_pieces(
    description: artifacts_pb2.Artifact, pieces: Generator[bytes, None, None]
) -> AsyncIterator[artifacts_pb2.ArtifactPiece]:
    """A stored file as ArtifactPiece messages: its description, then its bytes."""
    try:
        # Opened before the description goes: a missing file is an error, not an empty one.
        piece = await asyncio.to_thread(next, pieces, b"")
        yield artifacts_pb2.ArtifactPiece(artifact=description)
        while piece:
            yield artifacts_pb2.ArtifactPiece(data=piece)
            piece = await asyncio.to_thread(next, pieces, b"")
    finally:
        pieces.close()
