"""A submitter's limits, two of them, whatever their jobs' providers:

- ``jobs``: at most so many of its jobs admitted and not ended at once (Slurm's MaxJobs per
  user), so one person's thousand jobs take their turns beside everyone else's instead of
  filling every slot first. The jobs past it wait in the queue, out of line; others pass.
- ``submitted``: at most so many of its jobs not ended (queued, held or running) at all
  (Slurm's MaxSubmitJobs, a Kubernetes ResourceQuota's count/jobs): a submission past it is
  refused, so a runaway loop cannot fill the queue, the log and the database.

A submitter is a job's ``actor``: the name of the token that submitted it (a cron job's
runs: its owner's; ``anonymous`` without authentication). The limit named ``*``
(``DEFAULT``) is every submitter's that has none of its own. Each of a submitter's own two
is a number, ``None`` (no limit, whatever ``*`` says: a service account let through) or
``INHERITED``: ``*``'s (what a limit leaves unsaid when it is first set; a deleted one is
``*``'s in both).

Its events are its limits and its deletion, each naming its submitter; an inherited
limit is named in ``inherits`` (its value null). The jobs that take its room are counted
from the ``jobs`` read model (sql/019, sql/022).
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_submitter_name, derived_id
from hodei.errors import InvalidInput, InvalidTransition

DEFAULT = "*"
INHERITED: Literal["*"] = "*"
# A limit as set: a number, None (no limit) or INHERITED (``*``'s).
Bound = int | None | Literal["*"]
MAX_JOBS = 100_000
MAX_SUBMITTED = 1_000_000
# Limits at most: each is read by every admission round that meets one of its jobs.
MAX_LIMITS = 1000


def limit_id(submitter: str) -> UUID:
    """A limit's id, from its submitter's name: setting it twice is one aggregate."""
    return derived_id("submitter-limit", submitter)


def check_submitter(submitter: str) -> str:
    if submitter == DEFAULT:
        return submitter
    return check_submitter_name(submitter, f" or {DEFAULT} (every submitter without a limit of its own)")


def check_jobs(jobs: Bound) -> Bound:
    if isinstance(jobs, int) and not 0 <= jobs <= MAX_JOBS:
        raise InvalidInput(f"a submitter's limit is 0 (its jobs wait) to {MAX_JOBS} jobs at once, got {jobs}")
    return jobs


def check_submitted(submitted: Bound) -> Bound:
    if isinstance(submitted, int) and not 0 <= submitted <= MAX_SUBMITTED:
        raise InvalidInput(
            f"a submitter's jobs not ended are at most 0 (none submitted) to {MAX_SUBMITTED}, got {submitted}"
        )
    return submitted


def _event_fields(submitter: str, jobs: Bound, submitted: Bound) -> dict[str, Any]:
    check_jobs(jobs)
    check_submitted(submitted)
    given = {"jobs": jobs, "submitted": submitted}
    inherits = [name for name, bound in given.items() if bound == INHERITED]
    if submitter == DEFAULT and inherits:
        raise InvalidInput(f"* is every submitter's limit: it has none to take its {' and '.join(inherits)} from")
    values = {name: None if bound == INHERITED else bound for name, bound in given.items()}
    return {"submitter": submitter, **values, "inherits": inherits}


class SubmitterLimit(HodeiAggregate):
    id: UUID  # derived from the submitter (the library takes an `id` argument when annotated)

    @event("SubmitterLimitSet")
    def __init__(self, submitter: str, jobs: int | None, submitted: int | None, inherits: list[str]) -> None:
        self.submitter = submitter
        self._apply(jobs, submitted, inherits)

    @classmethod
    def create(cls, submitter: str, jobs: Bound = INHERITED, submitted: Bound = INHERITED) -> SubmitterLimit:
        check_submitter(submitter)
        # The library accepts `id` because the class annotates it (see `id: UUID` above).
        return cls(id=limit_id(submitter), **_event_fields(submitter, jobs, submitted))  # type: ignore[call-arg]

    @property
    def jobs(self) -> Bound:
        return self._bound("jobs")

    @property
    def submitted(self) -> Bound:
        return self._bound("submitted")

    def change(self, jobs: Bound, submitted: Bound) -> None:
        """New limits (a deleted one's submitter is limited anew): jobs over them keep
        running, and no more start (or are submitted) until they are under them."""
        fields = _event_fields(self.submitter, jobs, submitted)
        if self.deleted or (jobs, submitted) != (self.jobs, self.submitted):
            self._changed(**fields)

    def delete(self) -> None:
        """The submitter's jobs fall under ``*``'s limits, if any."""
        if self.deleted:
            raise InvalidTransition(f"the limit of {self.submitter} was already deleted")
        self._deleted(submitter=self.submitter)

    def _bound(self, name: str) -> Bound:
        return INHERITED if self.deleted or name in self._inherits else self._values[name]

    def _apply(self, jobs: int | None, submitted: int | None, inherits: list[str]) -> None:
        self._values = {"jobs": jobs, "submitted": submitted}
        self._inherits = list(inherits)
        self.deleted = False

    # Each event names its submitter: the queue's query reads a limit by name from the log
    # (hodei.submitter_bound, sql/022); a deletion has no limits.
    @event("SubmitterLimitChanged")
    def _changed(self, submitter: str, jobs: int | None, submitted: int | None, inherits: list[str]) -> None:
        self._apply(jobs, submitted, inherits)

    @event("SubmitterLimitDeleted")
    def _deleted(self, submitter: str) -> None:
        self.deleted = True


# Event versions: the library calls an upcaster when it reads an older payload. See the
# README, "Changing an event".
#
# Version 1 had no `submitted` (a submitter's jobs not ended were not bounded): it is `*`'s.
def _limit_v1_to_v2(state: dict[str, Any]) -> None:
    state.setdefault("submitted", None)
    state.setdefault("inherits", [] if state.get("submitter") == DEFAULT else ["submitted"])


SubmitterLimit.SubmitterLimitSet.class_version = 2  # type: ignore[attr-defined]
SubmitterLimit.SubmitterLimitSet.upcast_v1_v2 = staticmethod(_limit_v1_to_v2)  # type: ignore[attr-defined]
SubmitterLimit.SubmitterLimitChanged.class_version = 2  # type: ignore[attr-defined]
SubmitterLimit.SubmitterLimitChanged.upcast_v1_v2 = staticmethod(_limit_v1_to_v2)  # type: ignore[attr-defined]
