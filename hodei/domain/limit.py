"""A submitter's limit: at most so many of one submitter's jobs admitted and not ended at
once, whatever their providers — Slurm's MaxJobs per user, so one person's thousand jobs
take their turns beside everyone else's instead of filling every slot first. The jobs
past it wait in the queue, out of line; others pass them.

A submitter is a job's ``actor``: the name of the token that submitted it (a cron job's
runs: its owner's; ``anonymous`` without authentication). The limit named ``*``
(``DEFAULT``) is every submitter's that has none of its own; a submitter's own may be
``None``: no limit, whatever ``*`` says (a service account let through).

Its events are its limits and its deletion, each naming its submitter; the jobs that take
its room are counted from the ``jobs`` read model by the queue's query (sql/019).
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_submitter_name, derived_id
from hodei.errors import InvalidInput, InvalidTransition

DEFAULT = "*"
MAX_JOBS = 100_000
# Limits at most: each is read by every admission round that meets one of its jobs.
MAX_LIMITS = 1000


def limit_id(submitter: str) -> UUID:
    """A limit's id, from its submitter's name: setting it twice is one aggregate."""
    return derived_id("submitter-limit", submitter)


def check_submitter(submitter: str) -> str:
    if submitter == DEFAULT:
        return submitter
    return check_submitter_name(submitter, f" or {DEFAULT} (every submitter without a limit of its own)")


def check_jobs(jobs: int | None) -> int | None:
    if jobs is not None and not 0 <= jobs <= MAX_JOBS:
        raise InvalidInput(f"a submitter's limit is 0 (its jobs wait) to {MAX_JOBS} jobs at once, got {jobs}")
    return jobs


class SubmitterLimit(HodeiAggregate):
    id: UUID  # derived from the submitter (the library takes an `id` argument when annotated)

    @event("SubmitterLimitSet")
    def __init__(self, submitter: str, jobs: int | None) -> None:
        self.submitter = submitter
        self.jobs = jobs
        self.deleted = False

    @classmethod
    def create(cls, submitter: str, jobs: int | None) -> SubmitterLimit:
        # The library accepts `id` because the class annotates it (see `id: UUID` above).
        return cls(id=limit_id(check_submitter(submitter)), submitter=submitter, jobs=check_jobs(jobs))  # type: ignore[call-arg]

    def change(self, jobs: int | None) -> None:
        """A new limit (a deleted one's submitter is limited anew): jobs over it keep
        running, and no more start until they are under it."""
        check_jobs(jobs)
        if self.deleted or jobs != self.jobs:
            self._changed(submitter=self.submitter, jobs=jobs)

    def delete(self) -> None:
        """The submitter's jobs fall under ``*``'s limit, if any."""
        if self.deleted:
            raise InvalidTransition(f"the limit of {self.submitter} was already deleted")
        self._deleted(submitter=self.submitter)

    # Each event names its submitter: the queue's query reads a limit by name from the log
    # (hodei.submitter_limit, sql/019); a deletion has no `jobs`.
    @event("SubmitterLimitChanged")
    def _changed(self, submitter: str, jobs: int | None) -> None:
        self.jobs = jobs
        self.deleted = False

    @event("SubmitterLimitDeleted")
    def _deleted(self, submitter: str) -> None:
        self.deleted = True
