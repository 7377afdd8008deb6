"""The Worker aggregate: one ephemeral worker, bound to exactly one job."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_transition, derived_id, parse_time
from hodei.errors import InvalidTransition, Unauthenticated


class WorkerState(StrEnum):
    CREATING = "CREATING"
    CONNECTING = "CONNECTING"
    READY = "READY"
    BUSY = "BUSY"
    FAILED = "FAILED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


# FAILED is the failed path (lost, or the provider could not start it); a failed
# worker is still destroyed, so every worker ends TERMINATED.
# TERMINATING: a worker whose removal was under way, as older servers recorded it (they
# wrote WorkerTerminating before WorkerTerminated); a worker now ends in one event, once
# its resource is gone.
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.CREATING: frozenset(
        {WorkerState.CONNECTING, WorkerState.READY, WorkerState.FAILED, WorkerState.TERMINATED}
    ),
    WorkerState.CONNECTING: frozenset({WorkerState.READY, WorkerState.FAILED, WorkerState.TERMINATED}),
    WorkerState.READY: frozenset({WorkerState.BUSY, WorkerState.FAILED, WorkerState.TERMINATED}),
    WorkerState.BUSY: frozenset({WorkerState.FAILED, WorkerState.TERMINATED}),
    WorkerState.FAILED: frozenset({WorkerState.TERMINATED}),
    WorkerState.TERMINATING: frozenset({WorkerState.TERMINATED}),
    WorkerState.TERMINATED: frozenset(),
}

LIVE_STATES = frozenset({WorkerState.CREATING, WorkerState.CONNECTING, WorkerState.READY, WorkerState.BUSY})


class Worker(HodeiAggregate):
    """A worker's single-use token is derived from ``token_nonce`` by the server's
    secret; only the nonce and the expiry are stored, never the token."""

    @staticmethod
    def create_id(job_id: str, attempt: int) -> UUID:
        return derived_id("worker", job_id, attempt)

    @event("WorkerCreated")
    def __init__(
        self,
        job_id: str,
        attempt: int,
        provider_id: str,
        provider_type: str,
        token_nonce: str,
        token_expires_at: str,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.provider_id = provider_id
        self.provider_type = provider_type
        self.token_nonce = token_nonce
        self.token_expires_at = token_expires_at
        self.state = WorkerState.CREATING
        self.resource_id: str | None = None
        self.session_nonce: str | None = None
        self.reason: str | None = None

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_STATES

    # Commands ---------------------------------------------------------------

    def record_resource(self, resource_id: str) -> None:
        """The provider created the container, pod or process."""
        if self.resource_id == resource_id:
            return
        if self.resource_id is not None:
            raise InvalidTransition(f"worker {self.id} already has resource {self.resource_id}")
        if self.state in (WorkerState.TERMINATING, WorkerState.TERMINATED):
            raise InvalidTransition(f"worker {self.id} is {self.state}")
        self._resource_created(resource_id=resource_id)

    def register(self, session_nonce: str, hostname: str, now: datetime) -> str:
        """Exchanges the token for the worker's one session; returns the session's nonce.

        The token opens one session only. Presented again while it is valid and the
        worker lives (a retry whose reply was lost when a server died), it gets that same
        session back, not a new one; the worker's end, or the token's expiry, closes it."""
        if now >= parse_time(self.token_expires_at):
            raise Unauthenticated(f"worker {self.id} token expired at {self.token_expires_at}")
        if self.state in (WorkerState.CREATING, WorkerState.CONNECTING):
            self._registered(session_nonce=session_nonce, hostname=hostname)
            return session_nonce
        if self.is_live and self.session_nonce is not None:
            return self.session_nonce
        raise Unauthenticated(f"worker {self.id} token was already used: the worker is {self.state}")

    def dispatch(self, job_id: str) -> None:
        """The job is handed to this worker: the server will send run-job."""
        if job_id != self.job_id:
            raise InvalidTransition(f"worker {self.id} belongs to job {self.job_id}, not {job_id}")
        if self.state is WorkerState.BUSY:
            return
        check_transition("worker", self.state, WorkerState.BUSY, WORKER_TRANSITIONS)
        self._dispatched(job_id=job_id)

    def fail(self, reason: str) -> None:
        if self.state in (WorkerState.FAILED, WorkerState.TERMINATING, WorkerState.TERMINATED):
            return
        self._failed(reason=reason)

    def terminate(self, reason: str) -> None:
        """Its resource is gone: the worker ends (one event, whatever state it was in)."""
        if self.state is WorkerState.TERMINATED:
            return
        check_transition("worker", self.state, WorkerState.TERMINATED, WORKER_TRANSITIONS)
        self._terminated(reason=reason)

    # Events -----------------------------------------------------------------

    @event("WorkerResourceCreated")
    def _resource_created(self, resource_id: str) -> None:
        self.resource_id = resource_id
        if self.state is WorkerState.CREATING:
            self.state = WorkerState.CONNECTING

    @event("WorkerRegistered")
    def _registered(self, session_nonce: str, hostname: str) -> None:
        self.session_nonce = session_nonce
        self.state = WorkerState.READY

    @event("WorkerJobDispatched")
    def _dispatched(self, job_id: str) -> None:
        self.state = WorkerState.BUSY

    @event("WorkerFailed")
    def _failed(self, reason: str) -> None:
        self.state = WorkerState.FAILED
        self.reason = reason

    @event("WorkerTerminating")
    def _terminating(self, reason: str) -> None:
        self.state = WorkerState.TERMINATING
        self.reason = self.reason or reason

    @event("WorkerTerminated")
    def _terminated(self, reason: str | None = None) -> None:  # None in older servers' events
        self.state = WorkerState.TERMINATED
        self.reason = self.reason or reason
