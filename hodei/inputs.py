"""Files a job starts with (``job run --input``), on the server's disk.

A worker runs on a host, in a container or a pod that has none of the submitter's files,
and ``--script`` carries one file of 64 KiB. So the CLI packs the paths it is given into a
tar archive and uploads it (``UploadInput``) before it submits: the archive is kept
at ``<artifacts>/uploads/<submitter>/<sha256>``, named by its digest (Ray's working_dir
packages are named by their hash) among its submitter's, and the job's spec names that
digest and size. The submission gives
each job its own copy, a hard link at ``<artifacts>/<job id>/0/input.tar`` (attempts count
from 1: its artifacts never meet it), which goes with the job's artifacts — by retention,
or by ``--artifacts-expire`` — and which its worker fetches before the command runs (the
agent unpacks it, as the job's user). An upload no job named is deleted after an hour.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Generator, Iterable
from pathlib import Path

from hodei.artifacts import ArtifactStore, Stored, Upload, stored_pieces
from hodei.domain.spec import SHA256_HEX
from hodei.errors import InvalidInput, LimitReached, NotFound

# What the worker's RunJob calls it (its FetchArtifact of its own job, attempt 0).
INPUT_NAME = "input.tar"
# An upload no submission named within this many seconds is deleted; one a submission
# named, this long after (a submission the server did not answer is sent again: it names
# the upload again, and each job has its own copy anyway).
UNUSED_SECONDS = 3600.0
NAMED_SECONDS = 600.0
# The most bytes of one submitter's uploads kept at once, in HODEI_MAX_INPUT_BYTES: a
# submit token cannot fill the server's disk with uploads no job names.
MOST_KEPT = 8


class InputStore:
    def __init__(self, artifacts: ArtifactStore, max_bytes: int) -> None:
        self.artifacts = artifacts
        self.max_bytes = max_bytes
        self.uploads = uploads_directory(artifacts)

    def _owned(self, submitter: str) -> Path:
        """The uploads of one submitter: a job may name only its own submitter's (a
        digest is no secret — `job get` shows it — and naming another's archive would
        have given its files to another submitter's job)."""
        return self.uploads / hashlib.sha256(submitter.encode()).hexdigest()[:32]

    def begin(self, size: int, submitter: str) -> Upload:
        """An upload of an archive of ``size`` bytes, refused at once when past the limit."""
        if not 0 < size <= self.max_bytes:
            raise InvalidInput(
                f"an input archive of {size} bytes; it must be 1 to {self.max_bytes} bytes (HODEI_MAX_INPUT_BYTES)"
            )
        owned = self._owned(submitter)
        kept = sum(entry.stat().st_size for entry in os.scandir(owned)) if owned.exists() else 0
        if kept + size > MOST_KEPT * self.max_bytes:
            raise LimitReached(
                f"{submitter} has {kept} bytes of input uploads kept (each an hour, or {NAMED_SECONDS / 60:g} minutes "
                f"once a job named it); {size} more would pass {MOST_KEPT * self.max_bytes} "
                f"({MOST_KEPT} x HODEI_MAX_INPUT_BYTES): wait, or submit what was uploaded"
            )
        final = owned / f"upload-{os.getpid()}-{time.monotonic_ns()}"
        return Upload(final, "input", size, f"the input archive is more than the {size} bytes its upload said")

    def keep(self, upload: Upload) -> Stored:
        """The archive whole: kept under its digest, beside its part (the same archive
        again replaces it)."""
        stored = upload.finish()
        os.replace(upload.final, upload.final.with_name(stored.sha256))
        return stored

    def _upload(self, sha256: str, size: int, submitter: str) -> Path:
        if not SHA256_HEX.fullmatch(sha256):
            raise InvalidInput(f"input_sha256 must be 64 lowercase hex digits, got {sha256[:70]!r}")
        path = self._owned(submitter) / sha256
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(
                f"no input archive {sha256[:12]}… was uploaded by {submitter} in the last hour "
                "(job run --input uploads it first)"
            ) from None
        if found != size:
            raise InvalidInput(f"input archive {sha256[:12]}… is {found} bytes, not {size}")
        return path

    def find(self, sha256: str, size: int, submitter: str) -> None:
        """The submitter's upload is kept (NotFound otherwise): kept another hour from now,
        for the submission about to name it."""
        os.utime(self._upload(sha256, size, submitter))

    def attach(self, sha256: str, size: int, job_ids: Iterable[str], submitter: str) -> None:
        """Gives each job its copy of an upload of its submitter's (before its job is
        written: a worker never finds its input missing); an upload not there is refused
        by name."""
        source = self._upload(sha256, size, submitter)
        named = time.time() - UNUSED_SECONDS + NAMED_SECONDS
        os.utime(source, (named, named))  # pruned NAMED_SECONDS from now
        for job_id in job_ids:
            self._link(source, job_id)

    def copy(self, from_job: str, to_job: str) -> None:
        """A job's input for the job that runs it again (``job retry``)."""
        source = input_path(self.artifacts, from_job)
        if not source.exists():
            raise NotFound(
                f"job {from_job}'s input files were deleted with its artifacts: submit it again with --input"
            )
        self._link(source, to_job)

    def _link(self, source: Path, job_id: str) -> None:
        target = input_path(self.artifacts, job_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a submission sent again links anew
        try:
            os.link(source, target)
        except OSError:  # a file system without hard links: a copy of its own
            shutil.copyfile(source, target)


def uploads_directory(artifacts: ArtifactStore) -> Path:
    return artifacts.directory / "uploads"


def prune_uploads(artifacts: ArtifactStore, now: float | None = None) -> int:
    """Deletes the uploads no submission named for an hour (and parts left by a server
    that died mid-upload); how many. The retention sweep's."""
    limit = (now if now is not None else time.time()) - UNUSED_SECONDS
    pruned = 0
    for directory, _, names in os.walk(uploads_directory(artifacts)):  # a directory per submitter
        for name in names:
            path = os.path.join(directory, name)
            try:
                if os.stat(path).st_mtime < limit:
                    os.unlink(path)
                    pruned += 1
            except FileNotFoundError:
                continue
    return pruned


def input_path(artifacts: ArtifactStore, job_id: str) -> Path:
    return artifacts.job_directory(job_id) / "0" / INPUT_NAME


def read_input(artifacts: ArtifactStore, job_id: str) -> Generator[bytes, None, None]:
    """A job's copy of its files, in pieces (its worker's FetchArtifact)."""
    return stored_pieces(input_path(artifacts, job_id), f"job {job_id}'s input files are no longer stored")
