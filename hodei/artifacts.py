"""Job artifacts on disk: the files a job leaves for its submitter (``--artifact``).

Once a job's command exits, its worker uploads the files its patterns match; the server
keeps each at ``<log dir>/artifacts/<job id>/<attempt>/<name>``, beside the job's log:
the directory servers sharing a database share, deleted with the log by retention. A
file arrives as a hidden ``.part`` file and is renamed whole once its bytes are all
there, so a reader never sees half of one. Which artifacts a job has is what its
``JobArtifactsStored`` event lists (the worker's result names them): a file an upload
left behind (its worker died mid-way) is no artifact, and goes with the job's directory.

Each attempt may store at most ``max_bytes`` (``HODEI_MAX_ARTIFACT_BYTES``) and
``MAX_FILES`` files: past them a file is refused, its worker says so in the job's log,
and the job ends as it would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from hodei.domain.spec import artifact_path_problem
from hodei.errors import InvalidInput, LimitReached, NotFound

MAX_FILES = 1000
# The bytes of one message of an artifact, both ways: well under gRPC's 4 MiB default.
PIECE_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class Stored:
    name: str
    size_bytes: int
    sha256: str


class ArtifactRefused(InvalidInput):
    """The job's attempt has no room for this artifact."""


class ArtifactFilesReached(LimitReached):
    """The job's attempt stored its most files: no artifact more is taken, and its worker
    sends none more (a pattern matching a tree of 100,000 files was 99,000 refused
    uploads, each a line of the job's log)."""


class Upload:
    """One file arriving: written to a part file, hashed as it comes, renamed on ``finish``."""

    def __init__(self, final: Path, name: str, room: int, over: str = "") -> None:
        self.final = final
        self.name = name
        self.room = room
        # What a piece past ``room`` is told (default: an artifact past its attempt's limit).
        self.over = over or f"artifact {name}: past the {room} bytes left of the attempt's limit"
        self.part = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        self.size = 0
        self.digest = hashlib.sha256()
        final.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.part, "wb")  # noqa: SIM115 - closed by finish or discard

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.room:
            raise ArtifactRefused(self.over)
        self.digest.update(data)
        self.handle.write(data)

    def finish(self) -> Stored:
        self.handle.close()
        os.replace(self.part, self.final)
        return Stored(self.name, self.size, self.digest.hexdigest())

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # its buffer cannot be written out: it goes all the same
            self.handle.close()
        self.part.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def job_directory(self, job_id: str) -> Path:
        return self.directory / job_id

    def path(self, job_id: str, attempt: int, name: str) -> Path:
        problem = artifact_path_problem(name)
        if not problem and posixpath.normpath(name) != name:
            problem = f"`{name}` must be a plain path (no `.`, `//` or trailing `/`)"
        if problem:
            raise InvalidInput(f"artifact {problem}")
        return self._attempt_directory(job_id, attempt) / name

    def _attempt_directory(self, job_id: str, attempt: int) -> Path:
        return self.job_directory(job_id) / str(attempt)

    def begin(self, job_id: str, attempt: int, name: str, size: int) -> Upload:
        """An upload of ``name`` (``size`` bytes as its worker found it), refused at once
        when the attempt's limits leave no room for it. A file sent again (its first
        sending's answer lost with a server killed as it stored it) replaces itself: its
        stored copy takes no room from it."""
        final = self.path(job_id, attempt, name)
        used, files = self._used(self._attempt_directory(job_id, attempt))
        with contextlib.suppress(FileNotFoundError):
            used -= final.stat().st_size
            files -= 1
        room = self.max_bytes - used
        if files >= MAX_FILES:
            raise ArtifactFilesReached(f"the attempt stored {MAX_FILES} files, the limit")
        if size > room:
            raise ArtifactRefused(
                f"artifact {name} is {size} bytes; {room} of the attempt's {self.max_bytes} (HODEI_MAX_ARTIFACT_BYTES) "
                "are left"
            )
        return Upload(final, name, room)

    @staticmethod
    def _used(attempt_directory: Path) -> tuple[int, int]:
        """Bytes and files the attempt stored so far (a file sent again counts once it replaces)."""
        size = files = 0
        for root, _, names in os.walk(attempt_directory):
            for name in names:
                if not name.endswith(".part"):
                    size += os.stat(os.path.join(root, name)).st_size
                    files += 1
        return size, files

    def check(self, job_id: str, attempt: int, artifact: Stored) -> None:
        """The file a worker's result lists is there, as large as it was stored."""
        path = self.path(job_id, attempt, artifact.name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InvalidInput(f"artifact {artifact.name} of attempt {attempt} was never stored") from None
        if size != artifact.size_bytes:
            raise InvalidInput(f"artifact {artifact.name} is {size} bytes, not {artifact.size_bytes}")

    def read(self, job_id: str, attempt: int, name: str) -> Generator[bytes, None, None]:
        missing = f"artifact {name} of job {job_id} (attempt {attempt}) is no longer stored"
        return stored_pieces(self.path(job_id, attempt, name), missing)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_directory(job_id), ignore_errors=True)


def stored_pieces(path: Path, missing: str) -> Generator[bytes, None, None]:
    """A stored file in pieces of PIECE_BYTES, opened at the first; NotFound(``missing``)
    when it is not there (an artifact, a job's input files)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise NotFound(missing) from None
    with handle:
        while piece := handle.read(PIECE_BYTES):
            yield piece
