"""Where a command run beside a job's own (``job exec``) leaves what it printed: a file
beside the job's artifacts, written by the server its worker reports to and read by the
server the person who asked waits on. They may be two servers, which share the log
directory for the same reason (a job's log is read wherever it was written); the file is
written whole before ``JobExecEnded`` is recorded, so whoever sees the event finds it, and
taken by that one; one nobody took (its asker gone) goes with the job's artifacts (their
expiry, the log's retention)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hodei._proto import worker_pb2
from hodei.artifacts import ArtifactStore
from hodei.domain.execs import MOST_OUTPUT_BYTES
from hodei.errors import NotFound


class ExecResults:
    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts

    def path(self, job_id: str, index: int) -> Path:
        return self._artifacts.job_directory(job_id) / "execs" / f"{index}.pb"

    def keep(self, job_id: str, result: worker_pb2.ExecResult) -> None:
        """Writes the result whole (a reader never sees a part), each stream cut to
        MOST_OUTPUT_BYTES whatever the worker sent."""
        kept = worker_pb2.ExecResult()
        kept.CopyFrom(result)
        kept.stdout = result.stdout[:MOST_OUTPUT_BYTES]
        kept.stderr = result.stderr[:MOST_OUTPUT_BYTES]
        path = self.path(job_id, result.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", delete=False) as handle:
            handle.write(kept.SerializeToString())
        os.replace(handle.name, path)

    def take(self, job_id: str, index: int) -> worker_pb2.ExecResult:
        """The result, for the one who asked for the command; the file goes (its end and
        sizes stay in the job's history; the output was for that one alone)."""
        path = self.path(job_id, index)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"what command {index} run in job {job_id} printed is no longer kept") from None
        path.unlink(missing_ok=True)
        return worker_pb2.ExecResult.FromString(data)
