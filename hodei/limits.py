"""Submitter limits, as operators set them (``limit set``, ``limit delete``), as people see
them (``limit list``): each submitter's two limits with its jobs admitted and not ended, and
those waiting; and as submissions meet them (``make_room``).

Which limits exist is read from the log (each event names its submitter:
``hodei.submitter_bound``); the admission rounds (hodei.admission) count a submitter's jobs
from the ``jobs`` read model, and so does a submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hodei.domain.limit import (
    DEFAULT,
    INHERITED,
    MAX_LIMITS,
    Bound,
    SubmitterLimit,
    check_jobs,
    check_submitted,
    check_submitter,
    limit_id,
)
from hodei.errors import InvalidInput, InvalidTransition, LimitReached, NotFound
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import execute, fetch_all, fetch_value


@dataclass(frozen=True)
class SubmitterUse:
    submitter: str
    # Its limit of jobs at once (None: none), and whether it is its own (else `*`'s).
    jobs: int | None
    own: bool
    # Its jobs admitted and not ended (over its limit after a lower one: none starts until
    # they are under it), and its jobs waiting in the queue (held ones too).
    running: int
    queued: int
    # Its limit of jobs not ended (None: none), and whether it is its own.
    submitted: int | None = None
    submitted_own: bool = False


class Limits:
    def __init__(self, store: HodeiStore) -> None:
        self.store = store

    def set(self, submitter: str, actor: str, limits: Mapping[str, Bound]) -> SubmitterUse:
        """Sets the limits given (``jobs``, ``submitted``; one not given stays as it was,
        ``*``'s for a new one, none for ``*``'s own), or changes them. The next admission
        round (a second at most) lets the submitter's jobs in, or keeps them waiting; its
        next submission meets the other."""
        check_submitter(submitter)
        unknown = set(limits) - {"jobs", "submitted"}
        if unknown or not limits:
            raise InvalidInput(f"a submitter's limits are jobs and submitted, got {sorted(limits)}")
        check_jobs(limits.get("jobs"))
        check_submitted(limits.get("submitted"))

        def run() -> tuple[None, list[SubmitterLimit]]:
            limit = self.store.find(SubmitterLimit, limit_id(submitter))
            # Counted only for a new one; two set at once may both pass (a bound of what a
            # round reads, not a quota).
            if (limit is None or limit.deleted) and sum(
                use.own or use.submitted_own for use in self.all()
            ) >= MAX_LIMITS:
                raise InvalidTransition(f"there are {MAX_LIMITS} submitter limits, the most there may be: delete one")
            unsaid: Bound = None if submitter == DEFAULT else INHERITED
            jobs, submitted = (unsaid, unsaid) if limit is None or limit.deleted else (limit.jobs, limit.submitted)
            jobs, submitted = limits.get("jobs", jobs), limits.get("submitted", submitted)
            if limit is None:
                limit = SubmitterLimit.create(submitter, jobs, submitted)
            else:
                limit.change(jobs, submitted)
            return None, [limit]

        self.store.command(Meta(actor=actor), run)
        return self.get(submitter)

    def delete(self, submitter: str, actor: str) -> SubmitterUse:
        """Its jobs fall under ``*``'s limits, if any. The submitter as it is now."""
        check_submitter(submitter)

        def run() -> tuple[None, list[SubmitterLimit]]:
            limit = self.store.find(SubmitterLimit, limit_id(submitter))
            if limit is None:
                raise NotFound(f"{_whose(submitter)} has no limit of its own (`limit list` shows them)")
            limit.delete()
            return None, [limit]

        self.store.command(Meta(actor=actor), run)
        return self.get(submitter)

    def get(self, submitter: str) -> SubmitterUse:
        """A submitter's limits (its own, or ``*``'s) and its jobs: any name has them."""
        check_submitter(submitter)
        found = self._listed(submitter)
        if found:
            return found[0]
        default = None if submitter == DEFAULT else self._listed(DEFAULT)
        jobs, submitted = (default[0].jobs, default[0].submitted) if default else (None, None)
        return SubmitterUse(submitter, jobs, own=False, running=0, queued=0, submitted=submitted)

    def all(self) -> list[SubmitterUse]:
        """``*`` first, then by name: every submitter with a limit of its own or with jobs
        queued or running."""
        return self._listed(None)

    def make_room(self, submitter: str, jobs: int) -> None:
        """Refuses ``jobs`` more of the submitter's past its limit of jobs not ended
        (LimitReached). Called in the transaction that writes them (``command_transaction``):
        a limited submitter's submissions take their turns (an advisory lock held to the
        commit), so two at once cannot both pass its last room. A cron job's scheduled runs
        do not ask: a schedule is not refused, and its runs count."""
        most = fetch_value(self.store.pool, "submitted_limit", (submitter,))
        if most is None:
            return
        execute(self.store.pool, "lock_submissions", (submitter,))
        not_ended = fetch_value(self.store.pool, "submitter_not_ended", (submitter,))
        if not_ended + jobs > most:
            asked = "a job" if jobs == 1 else f"{jobs} jobs"
            raise LimitReached(
                f"submitter {submitter} has {not_ended} jobs not ended, {most} at most (`limit get {submitter}`): "
                f"{asked} more would pass it; wait for some to end, or cancel some"
            )

    def _listed(self, submitter: str | None) -> list[SubmitterUse]:
        return fetch_all(self.store.pool, "submitter_limits", {"submitter": submitter}, SubmitterUse)


def _whose(submitter: str) -> str:
    return "* (every submitter without a limit of its own)" if submitter == DEFAULT else f"submitter {submitter}"
