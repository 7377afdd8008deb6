"""Submitter limits, as operators set them (``limit set``, ``limit delete``) and as people
see them (``limit list``): each submitter's limit with its jobs admitted and not ended, and
those waiting.

Which limits exist is read from the log (each event names its submitter:
``hodei.submitter_limit``); the admission rounds (hodei.admission) count a submitter's jobs
from the ``jobs`` read model.
"""

from __future__ import annotations

from dataclasses import dataclass

from hodei.domain.limit import DEFAULT, MAX_LIMITS, SubmitterLimit, check_jobs, check_submitter, limit_id
from hodei.errors import InvalidTransition, NotFound
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_all


@dataclass(frozen=True)
class SubmitterUse:
    submitter: str
    # Its limit (None: none), and whether it is its own (else `*`'s, or none at all).
    jobs: int | None
    own: bool
    # Its jobs admitted and not ended (over its limit after a lower one: none starts until
    # they are under it), and its jobs waiting in the queue.
    running: int
    queued: int


class Limits:
    def __init__(self, store: HodeiStore) -> None:
        self.store = store

    def set(self, submitter: str, jobs: int | None, actor: str) -> SubmitterUse:
        """Sets the limit, or changes it; the next admission round (a second at most) lets
        the submitter's jobs in, or keeps them waiting."""
        check_submitter(submitter)
        check_jobs(jobs)

        def run() -> tuple[None, list[SubmitterLimit]]:
            limit = self.store.find(SubmitterLimit, limit_id(submitter))
            # Counted only for a new one; two set at once may both pass (a bound of what a
            # round reads, not a quota).
            if (limit is None or limit.deleted) and sum(use.own for use in self.all()) >= MAX_LIMITS:
                raise InvalidTransition(f"there are {MAX_LIMITS} submitter limits, the most there may be: delete one")
            if limit is None:
                limit = SubmitterLimit.create(submitter, jobs)
            else:
                limit.change(jobs)
            return None, [limit]

        self.store.command(Meta(actor=actor), run)
        return self.get(submitter)

    def delete(self, submitter: str, actor: str) -> SubmitterUse:
        """Its jobs fall under ``*``'s limit, if any. The submitter as it is now."""
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
        """A submitter's limit (its own, or ``*``'s) and its jobs: any name has one."""
        check_submitter(submitter)
        found = self._listed(submitter)
        if found:
            return found[0]
        default = None if submitter == DEFAULT else self._listed(DEFAULT)
        return SubmitterUse(submitter, default[0].jobs if default else None, own=False, running=0, queued=0)

    def all(self) -> list[SubmitterUse]:
        """``*`` first, then by name: every submitter with a limit of its own or with jobs
        queued or running."""
        return self._listed(None)

    def _listed(self, submitter: str | None) -> list[SubmitterUse]:
        return fetch_all(self.store.pool, "submitter_limits", {"submitter": submitter}, SubmitterUse)


def _whose(submitter: str) -> str:
    return "* (every submitter without a limit of its own)" if submitter == DEFAULT else f"submitter {submitter}"
