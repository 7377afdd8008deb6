"""The job's artifacts: the files its patterns (``--artifact``) match once its command
has exited, each uploaded to the server before the job's result, which lists them; and,
before its command runs, the artifacts of the jobs it starts after (``--fetch-artifacts``),
each fetched into ``artifacts/<job id>/<name>`` under its working directory, and the files it
was submitted with (``--input``), unpacked there.

A job must not get through its agent what it could not read itself: only regular files
inside its working directory are taken (no symbolic link is looked through: a link a
pattern reaches is skipped, saying so, and a linked directory a wildcard meets is passed
over), and when the agent is root and runs the job as another user, only files that user
may read. Every file skipped, pattern without a
match or upload refused is said in the job's log (``notes``), and the job ends as it
would have.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TypeVar

import grpc

from hodei._proto import artifacts_pb2, worker_pb2, worker_pb2_grpc
from hodei_worker.runner import JobUser, as_user, make_directories, reuse_freed_memory

PIECE_BYTES = 3 * 1024 * 1024
# Seconds a job's uploads may take in all, and its fetches: the server waits for its result
# this much longer for each (hodei.sagas.execution.ARTIFACTS_MARGIN, with room).
TRANSFER_SECONDS = 240.0
# Where fetched artifacts go, under the working directory.
FETCHED = "artifacts"
# The longest wait between two tries of a transfer while no server can be reached.
RETRY_MAX = 2.0
# What makes a pattern's component a wildcard rather than a name (``glob``'s test).
_WILD = re.compile(r"[*?[]")
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
    seen: set[str] = set()

    def add(path: str) -> None:
        name = _name(root, path)
        if name in excluded:
            left_out.add(name)
            return
        if name in seen:  # matched by another pattern too: taken, or said, once
            return
        seen.add(name)
        try:
            name.encode()
        except UnicodeEncodeError:  # bytes the file system keeps, no text a name can carry
            shown = os.fsencode(name).decode(errors="backslashreplace")
            found.notes.append(f"artifact {shown} skipped: its name is not UTF-8")
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
        elif user is not None and not user.may_read(path):
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
    pattern ending in ``/``: only directories)."""
    paths: dict[str, None] = {}  # a file of nested matched directories, once
    for hit in sorted(set(_glob(root, "", [part for part in pattern.split("/") if part]))):
        path = os.path.normpath(os.path.join(root, hit))
        if _directory(path):
            for directory, _, names in os.walk(path):
                paths.update((os.path.join(directory, name), None) for name in sorted(names))
        elif not pattern.endswith("/"):
            paths[path] = None
    return list(paths)


def _glob(root: str, at: str, parts: list[str]) -> Iterator[str]:
    """The paths under ``root``/``at`` (relative to ``root``) that the pattern's
    components ``parts`` match, as ``glob`` matches them (``**`` any depth of directories;
    ``*`` and ``**`` pass over names that begin with a dot), but for symbolic links:
    none is looked through. ``glob``'s ``**`` went down linked directories, so a job's link
    back up its tree (``ln -s / d/root``) had its agent walk every path round the loop for
    as long as the job was let run, its memory growing by the gigabyte. A link the pattern
    names is a match (the caller skips it, saying so); one a wildcard meets is passed over,
    as ``os.walk`` passes over a linked directory."""
    if not parts:
        if at:  # the working directory itself only when named (``.``), as ``glob`` has it
            yield at
        return
    part, rest = parts[0], parts[1:]
    here = os.path.join(root, at)
    if part == "**":
        yield from _glob(root, at, rest)
        for name in _names(here, "*"):
            path = os.path.join(at, name)
            if _directory(os.path.join(root, path)):
                yield from _glob(root, path, parts)
            elif not rest:  # last, ``**`` matches what is not a directory too
                yield path
        return
    wild = _WILD.search(part) is not None
    if wild:
        named = _names(here, part)
    elif os.path.lexists(os.path.join(here, part)):
        named = [part]
    else:
        named = []
    for name in named:
        path = os.path.join(at, name)
        if not rest or _directory(os.path.join(root, path)):
            yield from _glob(root, path, rest)
        elif not wild and os.path.islink(os.path.join(root, path)):
            yield path


def _names(directory: str, part: str) -> list[str]:
    """The names in ``directory`` that the pattern component ``part`` matches; none where
    it cannot be listed (gone, not a directory, not readable)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    if not part.startswith("."):
        names = [name for name in names if not name.startswith(".")]
    return fnmatch.filter(names, part)


def _directory(path: str) -> bool:
    """A directory itself, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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

    def send(server: worker_pb2_grpc.WorkerAgentServiceStub) -> worker_pb2.StoredArtifact:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            stored: worker_pb2.StoredArtifact = server.UploadArtifact(
                _pieces(job_id, name, handle), metadata=metadata, timeout=_left(until)
            )
            return stored
        finally:
            os.close(handle)

    return _again_while_cut(stub, send, until)


def _left(until: float) -> float:
    return max(until - time.monotonic(), 0.001)


def _again_while_cut(
    stub: Callable[[], worker_pb2_grpc.WorkerAgentServiceStub],
    transfer: Callable[[worker_pb2_grpc.WorkerAgentServiceStub], T],
    until: float,
) -> T:
    """``transfer(stub())``, again from its beginning while no server can be reached (one
    was killed, or is restarting) or the agent moved on from the channel it went over,
    backing off, until ``until``. The agent's stream, lost with the server, moves to the
    next address and closes the channel it leaves: a transfer on it ends CANCELLED
    ("Channel closed!"), or is refused before it begins (ValueError), whatever the server
    would have answered, and goes again where the stream went. Any other failure on the
    channel still in use is the server's answer, and is raised."""
    delay = 0.2
    while True:
        server = stub()
        try:
            return transfer(server)
        except grpc.RpcError as exc:
            cut = exc.code() == grpc.StatusCode.UNAVAILABLE or stub() is not server
            if not cut or time.monotonic() + delay > until:
                raise
        except ValueError:
            if stub() is server or time.monotonic() + delay > until:
                raise
        time.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


def counted(number: int, noun: str) -> str:
    """``1 artifact``, ``3 artifacts``: the job's log's notes."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def fetch_problem(exc: OSError | ValueError | grpc.RpcError) -> str:
    """Why a fetch before the command failed, in the job's log."""
    if isinstance(exc, grpc.RpcError):
        return refusal(exc, "fetches")
    return getattr(exc, "strerror", None) or str(exc)


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
    whole (a part file renamed) and as the server stored it (its SHA-256 checked), as the
    job's user (``as_user``: ``root`` is a directory that user may change); its size.
    Raises OSError, an RpcError, or ValueError (a bad name or digest)."""
    artifact = wanted.artifact
    base = os.path.join(root, FETCHED, wanted.job_id)
    path = os.path.normpath(os.path.join(base, artifact.name))
    if os.path.commonpath([path, base]) != base or os.path.isabs(artifact.name):
        raise ValueError(f"artifact {artifact.name!r} would be written outside {base}")
    _file_utility(make_directories(os.path.dirname(path), user), os.path.dirname(path))
    request = artifacts_pb2.ReadArtifactRequest(job_id=wanted.job_id, name=artifact.name, attempt=artifact.attempt)
    part = f"{path}.part"

    def receive(server: worker_pb2_grpc.WorkerAgentServiceStub) -> None:
        with _writing(part, user) as target:
            sha256 = write_pieces(server.FetchArtifact(request, metadata=metadata, timeout=_left(until)), target)
        if sha256 != artifact.sha256:
            raise ValueError(f"artifact {artifact.name} of job {wanted.job_id}: its bytes are not those stored")

    try:
        _again_while_cut(stub, receive, until)
        if user is None:
            os.replace(part, path)
        else:
            _file_utility(as_user(user, "mv", "-f", "-T", "--", part, path), path)
    except BaseException:
        if user is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        else:
            as_user(user, "rm", "-f", "--", part)
        raise
    return artifact.size_bytes


def fetch_input(
    stub: Callable[[], worker_pb2_grpc.WorkerAgentServiceStub],
    metadata: tuple[tuple[str, str], ...],
    job_id: str,
    archive: artifacts_pb2.Artifact,
    root: str,
    scratch: str,
    user: JobUser | None,
    until: float,
) -> tuple[int, int]:
    """Fetches the job's own files (``--input``) into a file of the agent's under
    ``scratch``, checks them against the digest they were submitted with, and unpacks them
    into ``root`` as the job's user; the files and bytes unpacked. Raises OSError, an
    RpcError, or ValueError (bytes not those uploaded, an archive that cannot be unpacked)."""
    request = artifacts_pb2.ReadArtifactRequest(job_id=job_id, name=archive.name, attempt=0)
    handle, path = tempfile.mkstemp(prefix=".hodei-input-", dir=scratch)
    os.close(handle)
    try:

        def receive(server: worker_pb2_grpc.WorkerAgentServiceStub) -> None:
            with open(path, "wb") as target:
                sha256 = write_pieces(server.FetchArtifact(request, metadata=metadata, timeout=_left(until)), target)
            if sha256 != archive.sha256:
                raise ValueError("its bytes are not those uploaded")

        _again_while_cut(stub, receive, until)
        return _unpack(path, root, scratch, user)
    finally:
        os.unlink(path)


def _unpack(path: str, root: str, scratch: str, user: JobUser | None) -> tuple[int, int]:
    """Unpacks the archive at ``path`` into ``root``, each member as ``_member`` allows
    it; the files and bytes unpacked. For a job run as another user, into a directory of
    the agent's first (nobody else's: the checks hold), its files then given to that user,
    who copies them into ``root`` (``cp -a``, as ``as_user`` acts: the working directory is
    that user's to change, and the archive can put nothing where the user could not)."""
    target = root if user is None else tempfile.mkdtemp(prefix=".hodei-input-", dir=scratch)
    files = size = 0
    try:
        with tarfile.open(path, mode="r:*") as archive:  # the CLI's is plain; an API's may be compressed
            for member in archive:
                archive.extract(_member(member, target), target)
                if member.isfile():
                    files, size = files + 1, size + member.size
        if user is not None:
            for directory, names, found in os.walk(target, topdown=False):
                for name in (*names, *found):
                    os.lchown(os.path.join(directory, name), user.uid, user.gid)
            os.chown(target, user.uid, user.gid)
            os.chmod(target, stat.S_IMODE(os.stat(root).st_mode))  # `cp -a` gives root its mode
            _file_utility(as_user(user, "cp", "-a", "--", f"{target}/.", f"{root}/"), root)
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"cannot unpack it: {exc}") from None
    finally:
        if user is not None:
            shutil.rmtree(target, ignore_errors=True)
    return files, size


def _member(member: tarfile.TarInfo, target: str) -> tarfile.TarInfo:
    """The member as it may be unpacked into ``target``: the rules of tarfile's "data"
    filter, written out because the worker image's Python (Debian's 3.11.2) predates it —
    no absolute name, nothing (through ``..`` or a link unpacked before it) outside
    ``target``, no link leading out of it, no hard link, device or FIFO, and modes without
    set-id bits or group and others' write. Raises ValueError naming the member."""
    name = member.name
    base = os.path.realpath(target)

    def inside(path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), base]) == base

    if os.path.isabs(name) or not inside(os.path.join(base, name)):
        raise ValueError(f"cannot unpack {name!r}: it would be outside the working directory")
    if member.issym():
        if os.path.isabs(member.linkname) or not inside(os.path.join(base, os.path.dirname(name), member.linkname)):
            raise ValueError(f"cannot unpack {name!r}: a link to {member.linkname!r}, outside the working directory")
    elif not (member.isfile() or member.isdir()):
        raise ValueError(f"cannot unpack {name!r}: only files, directories and links are unpacked")
    allowed = copy.copy(member)
    allowed.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    allowed.uid = allowed.gid = 0
    allowed.uname = allowed.gname = ""
    return allowed


def _file_utility(problem: str | None, path: str) -> None:
    if problem is not None:
        raise OSError(f"{path}: {problem}")


@contextlib.contextmanager
def _writing(path: str, user: JobUser | None) -> Iterator[IO[bytes]]:
    """``path`` open for writing, by the job's user (``cat`` as that user, fed through a
    pipe): the working directory is the user's to change, and root writing in it would
    follow a link the user could not."""
    if user is None:
        with open(path, "wb") as target:
            yield target
        return
    writer = subprocess.Popen(
        ["sh", "-c", 'exec cat > "$1"', "sh", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
    )
    assert writer.stdin is not None
    assert writer.stderr is not None
    try:
        with contextlib.suppress(BrokenPipeError):  # it could not open the file: said below
            yield writer.stdin
    finally:
        with contextlib.suppress(BrokenPipeError):
            writer.stdin.close()
        said = writer.stderr.read().decode(errors="replace").strip().rpartition(": ")[2]
        if writer.wait() != 0:
            raise OSError(f"{path}: {said or 'cannot write'} for the job's user (uid {user.uid})")


def write_pieces(pieces: Iterable[artifacts_pb2.ArtifactPiece], target: IO[bytes]) -> str:
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


def _keep(digest: hashlib._Hash, target: IO[bytes], data: bytes) -> None:
    digest.update(data)
    target.write(data)
