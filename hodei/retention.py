"""Retention: what is kept only for a while. The event log is kept for good.

- Published outbox rows older than ``HODEI_OUTBOX_RETENTION`` are deleted, a thousand
  per statement (each its own short transaction: writers never wait on it). The outbox is
  a delivery queue, not a record: the events stay in ``domain_events``.
- Job logs older than ``HODEI_LOG_RETENTION``: the file is deleted, and the job's
  artifacts with it (its output goes as one), then a ``JobLogsExpired`` event removes the
  ``job_log_files`` row, so a replay of the log rebuilds exactly what is left.
- Artifacts of a job that set a time of their own (``--artifacts-expire``), once it has
  passed since the job ended: the files, then a ``JobArtifactsExpired`` event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hodei.artifacts import ArtifactStore
from hodei.domain.job import Job
from hodei.inputs import prune_uploads
from hodei.logs import LogStore
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import execute, fetch_column

log = logging.getLogger(__name__)

OUTBOX_BATCH = 1000
LOG_BATCH = 100


class Retention:
    def __init__(
        self, store: HodeiStore, logs: LogStore, artifacts: ArtifactStore, outbox_seconds: float, log_seconds: float
    ) -> None:
        self.store = store
        self.logs = logs
        self.artifacts = artifacts
        self.outbox_seconds = outbox_seconds
        self.log_seconds = log_seconds

    def prune_inputs(self) -> int:
        pruned = prune_uploads(self.artifacts)
        if pruned:
            log.info("deleted %d uploaded input archives no job named within an hour", pruned)
        return pruned

    def prune_outbox(self) -> int:
        """Deletes published rows past the retention, a batch at a time; how many."""
        total = 0
        while (deleted := execute(self.store.pool, "delete_old_outbox_rows", (self.outbox_seconds, OUTBOX_BATCH))) > 0:
            total += deleted
            if deleted < OUTBOX_BATCH:
                break
        return total

    def expire_artifacts(self) -> int:
        """Deletes the artifacts of jobs whose own expiry passed; how many jobs'."""
        expired = fetch_column(
            self.store.pool, "expired_job_artifacts", {"log_seconds": self.log_seconds, "limit": LOG_BATCH}
        )
        for job_id in expired:
            self.artifacts.delete(str(job_id))  # the files first, as for logs
            self._record(str(job_id), Job.expire_artifacts)
        if expired:
            log.info("deleted the artifacts of %d jobs past their own expiry", len(expired))
        return len(expired)

    def _record(self, job_id: str, change: Callable[[Job], None]) -> None:
        """The deletion's event, by the system (if it fails, the next round records it)."""

        def run() -> tuple[None, list[Job]]:
            job = self.store.load(Job, job_id)
            change(job)
            return None, [job]

        self.store.command(Meta(actor=SYSTEM, correlation_id=job_id), run)

    def expire_logs(self) -> int:
        """Deletes the logs of jobs whose log is past the retention; how many."""
        expired = fetch_column(self.store.pool, "expired_job_logs", (self.log_seconds, LOG_BATCH))
        for job_id in expired:
            # The files first: if the event then fails, the next round records it.
            self.logs.path(str(job_id)).unlink(missing_ok=True)
            self.artifacts.delete(str(job_id))
            self._record(str(job_id), Job.expire_logs)
        if expired:
            log.info("deleted the logs and artifacts of %d jobs older than %gs", len(expired), self.log_seconds)
        return len(expired)
