"""Jobs the platform cancels on its own (as ``system``), each saying why: a cron job's
earlier run that its newer one replaces (``--concurrency replace``, hodei.cron), and the jobs
a cancelled job submitted with its API token (``job run --api-token``), here. A job whose
pipeline branch is not taken is the admission's (hodei.admission: it never started)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from hodei.domain.job import Job
from hodei.errors import ConcurrencyConflict
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_all

log = logging.getLogger(__name__)


def cancel(store: HodeiStore, job_id: UUID | str, reason: str, grace: float, now: datetime) -> bool:
    """Cancels the job, its processes given ``grace`` seconds (HODEI_KILL_GRACE), unless it
    ended meanwhile; whether it did."""

    def run() -> tuple[bool, list[Job]]:
        job = store.load(Job, job_id)
        if job.is_terminal:
            return False, []
        job.cancel(reason, grace, now)
        return True, [job]

    done = store.command(Meta(actor=SYSTEM, correlation_id=str(job_id)), run)
    if done:
        log.info("cancelled job %s: %s", job_id, reason, extra={"job_id": str(job_id)})
    return done


@dataclass(frozen=True)
class Child:
    """A job not ended that a job now cancelled submitted with its API token."""

    job_id: str
    parent_id: str


class Children:
    """The jobs a job submitted with its API token go with it when it is cancelled, as a
    GitLab child pipeline goes with its parent's cancel and Kubernetes deletes what an
    object owns, whoever cancelled it (a person, a cron job's replace). A job that
    succeeded, failed or timed out leaves them running (a job that fans out work and exits
    is the point of its token). Read from the jobs' states at each sweep, so a child whose
    submission crossed its parent's cancel, or a cancel the server died after, is found at
    the next one; the child's own children follow it a sweep later."""

    def __init__(self, store: HodeiStore, kill_grace: float, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.kill_grace = kill_grace
        self.clock = clock

    def cancel_with_parents(self, limit: int = 100) -> int:
        """Cancels up to ``limit`` of them; how many."""
        cancelled = 0
        for child in fetch_all(self.store.pool, "children_of_cancelled", {"limit": limit}, Child):
            reason = f"job {child.parent_id}, which submitted it with its API token, was cancelled"
            try:
                cancelled += cancel(self.store, child.job_id, reason, self.kill_grace, self.clock())
            except ConcurrencyConflict:
                continue  # it kept moving while this tried: the next sweep looks again
        return cancelled
