"""The job's artifacts: the files its patterns (``--artifact``) match once its command
has exited, each uploaded to the server before the job's result, which lists them; and,
before its command runs, the artifacts of the jobs it starts after (``--fetch-artifacts``),
each fetched into ``artifacts/<job id>/<name>`` under its working directory.

A job must not get through its agent what it could not read itself: only regular files
inside its working directory are taken (a symbolic link is not followed, a path that
leads out through one is skipped), and when the agent is root and runs the job as
another user, only files that user may read. Every file skipped, pattern without a
match or upload refused is said in the job's log (``notes``), and the job ends as it
would have.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

import grpc

from hodei._proto import artifacts_pb2, worker_pb2, worker_pb2_grpc
from hodei_worker.runner import JobUser, reuse_freed_memory

PIECE_BYTES = 3 * 1024 * 1024
# Seconds a job's uploads may take in all, and its fetches: the server waits for its result
# this much longer for each (hodei.sagas.execution.ARTIFACTS_MARGIN, with room).
TRANSFER_SECONDS = 240.0
# Where fetched artifacts go, under the working directory.
FETCHED = "artifacts"
# The longest wait between two tries of a transfer while no server can be reached.
RETRY_MAX = 2.0
T = TypeVar("T")


@dataclass
class Found:
    """Files to upload (name -> path) and what to tell the job's log."""

    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find(root: str, patterns: Sequence[str], user: JobUser | None, exclude: Sequence[str] = ()) -> Found:
    """The files ``patterns`` match under ``root`` (a directory matched: every file in it),
    but those ``exclude`` matches (in the same way)."""
    found = Found()
    real_root = os.path.realpath(root)
    excluded = {_name(root, path) for pattern in exclude for path in _matches(root, pattern)}
    left_out: set[str] = set()

    def add(path: str) -> None:
        name = _name(root, path)
        if name in excluded:
            left_out.add(name)
            return
        if name in found.files:
            return
        try:
            info = os.lstat(path)
        except OSError as exc:
            found.notes.append(f"artifact {name} skipped: {exc.strerror}")
            return
        if stat.S_ISLNK(info.st_mode) or os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
            found.notes.append(f"artifact {name} skipped: a symbolic link, or a path through one")
        elif not stat.S_ISREG(info.st_mode):
            found.notes.append(f"artifact {name} skipped: not a regular file")
        elif user is not None and not user.allows(info, 0o4):
            found.notes.append(f"artifact {name} skipped: the job's user may not read it")
        else:
            found.files[name] = path

    for pattern in patterns:
        paths = _matches(root, pattern)
        if not paths:
            found.notes.append(f"no file matches artifact pattern `{pattern}`")
        for path in paths:
            add(path)
    if left_out:
        found.notes.append(f"{counted(len(left_out), 'file')} left out (--artifact-exclude)")
    return found


def _name(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _matches(root: str, pattern: str) -> list[str]:
    """The paths a pattern matches under ``root``, a directory's files in its place (a
    symbolic link to a directory is itself, not followed)."""
    paths: list[str] = []
    for hit in sorted(glob.glob(pattern, root_dir=root, recursive=True)):
        path = os.path.normpath(os.path.join(root, hit))
        if os.path.isdir(path) and not os.path.islink(path):
            for directory, _, names in os.walk(path):
                paths.extend(os.path.join(directory, name) for name in sorted(names))
        else:
            paths.append(path)
    return paths


def _pieces(job_id: str, name: str, handle: int) -> Iterator[worker_pb2.ArtifactUpload]:
    size = os.fstat(handle).st_size
    yield worker_pb2.ArtifactUpload(header=worker_pb2.ArtifactHeader(job_id=job_id, name=name, size_bytes=size))
    while data := os.read(handle, PIECE_BYTES):
        yield worker_pb2.ArtifactUpload(data=data)


def upload(
    stub: Callable[[], worker_pb2_grpc.WorkerAgentServiceStub],
    metadata: tuple[tuple[str, str], ...],
    job_id: str,
    name: str,
    path: str,
    until: float,
) -> worker_pb2.StoredArtifact:
    """Sends one file by ``until`` (monotonic); raises an RpcError: a refusal (over the
    job's limits), or running out of time (DEADLINE_EXCEEDED)."""

    reuse_freed_memory()

    def send() -> worker_pb2.StoredArtifact:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            stored: worker_pb2.StoredArtifact = stub().UploadArtifact(
                _pieces(job_id, name, handle), metadata=metadata, timeout=_left(until)
            )
            return stored
        finally:
            os.close(handle)

    return _again_while_unavailable(send, until)


def _left(until: float) -> float:
    return max(until - time.monotonic(), 0.001)


def _again_while_unavailable(transfer: Callable[[], T], until: float) -> T:
    """``transfer()``, again from its beginning while no server can be reached (one was
    killed, or is restarting: the agent's stream moves on to the next meanwhile, and the
    calls go where it went, through ``stub()``), backing off, until ``until``."""
    delay = 0.2
    while True:
        try:
            return transfer()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > until:
                raise
        time.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


def counted(number: int, noun: str) -> str:
    """``1 artifact``, ``3 artifacts``: the job's log's notes."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def refusal(exc: grpc.RpcError, transfers: str) -> str:
    """Why a transfer failed, in the job's log: the server's words, or the time it ran out of."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {transfers} took their {TRANSFER_SECONDS:g} s"
    return str(exc.details())


def fetch(
    stub: Callable[[], worker_pb2_grpc.WorkerAgentServiceStub],
    metadata: tuple[tuple[str, str], ...],
    wanted: worker_pb2.InputArtifact,
    root: str,
    user: JobUser | None,
    until: float,
) -> int:
    """Writes one artifact of another job at ``artifacts/<job id>/<name>`` under ``root``,
    whole (a part file renamed) and as the server stored it (its SHA-256 checked), owned
    by the job's user; its size. Raises OSError, an RpcError, or ValueError (a bad name
    or digest)."""
    artifact = wanted.artifact
    base = os.path.join(root, FETCHED, wanted.job_id)
    path = os.path.normpath(os.path.join(base, artifact.name))
    if os.path.commonpath([path, base]) != base or os.path.isabs(artifact.name):
        raise ValueError(f"artifact {artifact.name!r} would be written outside {base}")
    _make_directories(os.path.dirname(path), root, user)
    request = artifacts_pb2.ReadArtifactRequest(job_id=wanted.job_id, name=artifact.name, attempt=artifact.attempt)
    part = f"{path}.part"

    def receive() -> None:
        with open(part, "wb") as target:
            sha256 = write_pieces(stub().FetchArtifact(request, metadata=metadata, timeout=_left(until)), target)
        if sha256 != artifact.sha256:
            raise ValueError(f"artifact {artifact.name} of job {wanted.job_id}: its bytes are not those stored")

    try:
        _again_while_unavailable(receive, until)
        if user is not None:
            os.chown(part, user.uid, user.gid)
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
    return artifact.size_bytes


def write_pieces(pieces: Iterable[artifacts_pb2.ArtifactPiece], target: BinaryIO) -> str:
    """Writes the bytes of an artifact's pieces (ReadArtifact's, FetchArtifact's) to
    ``target`` as they come; their SHA-256, for the caller to check. A thread of its own
    hashes and writes a piece while the next is received (both let go of the GIL on
    pieces this size): a fetch of 256 MiB took 0.6x the floor less (docs/benchmarks.md)."""
    reuse_freed_memory()
    digest = hashlib.sha256()
    with ThreadPoolExecutor(1) as keeper:
        kept: Future[None] | None = None
        for piece in pieces:
            if piece.WhichOneof("kind") == "data":
                data = piece.data  # each read of the field copies its bytes
                if kept is not None:
                    kept.result()
                kept = keeper.submit(_keep, digest, target, data)
        if kept is not None:
            kept.result()
    return digest.hexdigest()


def _keep(digest: hashlib._Hash, target: BinaryIO, data: bytes) -> None:
    digest.update(data)
    target.write(data)


def _make_directories(directory: str, root: str, user: JobUser | None) -> None:
    """Makes ``directory`` and those on the way from ``root``, owned by the job's user."""
    missing = []
    while not os.path.isdir(directory) and directory != root:
        missing.append(directory)
        directory = os.path.dirname(directory)
    for made in reversed(missing):
        os.mkdir(made)
        if user is not None:
            os.chown(made, user.uid, user.gid)
