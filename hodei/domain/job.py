"""The Job aggregate: what a user asked to run and where it stands."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_transition
from hodei.domain.execs import MOST_EXECS
from hodei.domain.retries import retried
from hodei.domain.spec import JobSpec, Resources, check_limits, check_priority
from hodei.errors import InvalidInput, InvalidTransition, LimitReached


class JobState(StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"

    @property
    def code(self) -> int:
        """The JobStatus code of the API (``Status: SUCCEEDED (Status Code: 4)``)."""
        return _STATUS_CODES[self]

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


_STATUS_CODES = {state: code for code, state in enumerate(JobState, start=1)}

TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})

# The signals `job signal` sends to a running job's processes (`scancel --signal`, `docker
# kill --signal`): by name, as every host numbers them alike only for these.
SIGNALS = ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "ALRM", "TERM", "CONT", "STOP", "TSTP", "WINCH")


# A job's outputs ($HODEI_OUTPUT): the agent keeps at most this many, of this many bytes
# in all (hodei_worker.outputs), and the server keeps no more of a worker's report.
MOST_OUTPUTS = 100
MOST_OUTPUT_BYTES = 64 * 1024
_OUTPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


def outputs_bytes(outputs: Mapping[str, str]) -> int:
    """What outputs weigh: their names' and values' UTF-8 bytes."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in outputs.items())


def outputs_problem(outputs: Mapping[str, str]) -> str | None:
    """What is wrong with a worker's report of its job's outputs: they go into the job's
    events, so their bounds are the server's to hold too."""
    if len(outputs) > MOST_OUTPUTS:
        return f"{len(outputs)} outputs; the most is {MOST_OUTPUTS}"
    size = outputs_bytes(outputs)
    if size > MOST_OUTPUT_BYTES:
        return f"outputs of {size} bytes; the most is {MOST_OUTPUT_BYTES}"
    wrong = next((key for key in outputs if not _OUTPUT_NAME.match(key)), None)
    return f"output name {wrong[:40]!r} is not a name" if wrong is not None else None


def check_signal(name: str) -> str:
    """A signal's name, with or without SIG, in any case: ``usr1``, ``SIGUSR1`` -> ``USR1``."""
    found = name.strip().upper().removeprefix("SIG")
    if found not in SIGNALS:
        raise InvalidInput(f"a signal is one of {', '.join(SIGNALS)} (with or without SIG), got {name[:40]!r}")
    return found


def hold_text(by: str, reason: str) -> str:
    """Who held a job, and why when they said: "by alice: the data is late"."""
    return f"by {by}: {reason}" if reason else f"by {by}"


def after_met(condition: str, state: JobState) -> bool | None:
    """Whether the condition a job submitted with ``--after`` set on another job holds:
    True, False (it never will: that job ended otherwise) or None (that job has not
    ended). The SQL function ``hodei.after_met`` (sql/013) is the queue's copy of it."""
    if not state.is_terminal:
        return None
    if condition == "any":
        return True
    return (state is JobState.SUCCEEDED) == (condition == "ok")


# Every allowed move. Going back to PENDING is a requeue after a lost worker.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.ASSIGNED, JobState.FAILED, JobState.CANCELLED}),
    JobState.ASSIGNED: frozenset({JobState.RUNNING, JobState.PENDING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.PENDING}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
}


class Job(HodeiAggregate):
    id: UUID  # given by the caller (the library takes an `id` argument when annotated)

    @event("JobCreated")
    def __init__(
        self, spec: dict[str, Any], sealed_secrets: dict[str, str], retry_of: str | None, request_digest: str | None
    ) -> None:
        """``sealed_secrets``: each secret's value encrypted under the job's own key
        (kept outside the event log, see hodei.secrets): never a plain value.
        ``retry_of``: the job this one was submitted again from.
        ``request_digest``: of a job submitted with an idempotency key, what the request
        asked (its secrets' values left out), so that the key sent again with another
        request is told apart from a repeat (``same_request``)."""
        self.spec = JobSpec.from_payload(spec)
        self.sealed_secrets = dict(sealed_secrets)
        self.retry_of = retry_of
        self.request_digest = request_digest
        # Attempts begun because the command failed (not because a worker was lost).
        self.retries_used = 0
        self.retry_at: datetime | None = None
        self.state = JobState.PENDING
        self.attempt = 1
        self.provider_id: str | None = None
        self.provider_type: str | None = None
        self.worker_id: str | None = None
        self.exit_code: int | None = None
        self.error_message: str | None = None
        self.log_uri: str | None = None
        # The attempt that holds a slot of its provider (None: waiting in the queue).
        self.admitted_attempt: int | None = None
        self.logs_expired = False
        # A cancelled job's processes are SIGKILLed by then at the latest; its worker
        # stays until it reports them stopped (``stopped``) or is lost.
        self.stop_by: datetime | None = None
        self.stopped = False
        # Held in the queue (`job hold`): who held it (None: not held) and why.
        self.held_by: str | None = None
        self.hold_reason = ""
        # Files its attempts left (`job artifacts`): name, size_bytes, sha256, attempt.
        self.artifacts: list[dict[str, Any]] = []
        self.artifacts_expired = False
        # What its latest attempt that ended left in $HODEI_OUTPUT (phases.latest_outputs).
        self.outputs: dict[str, str] = {}
        # The commands run beside its own (`job exec`), by index: whether each has ended.
        self.execs: list[bool] = []

    @classmethod
    def submit(
        cls,
        spec: JobSpec,
        job_id: UUID,
        sealed_secrets: dict[str, str] | None = None,
        retry_of: UUID | None = None,
        request_digest: str | None = None,
    ) -> Job:
        sealed = sealed_secrets or {}
        spec.validate()
        if sorted(sealed) != sorted(spec.secret_names):
            raise InvalidTransition("the job's sealed secrets must be exactly the ones its spec names")
        # The library accepts `id` because the class annotates it (see `id: UUID` above).
        return cls(  # type: ignore[call-arg]
            id=job_id,
            spec=spec.to_payload(),
            sealed_secrets=sealed,
            retry_of=str(retry_of) if retry_of else None,
            request_digest=request_digest,
        )

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    # Commands ---------------------------------------------------------------

    def select_provider(self, provider_id: str, provider_type: str, admitted: bool = False) -> None:
        """``admitted``: the provider had a free slot and nobody waiting for one
        (hodei.admission), so the job takes it at once: recorded in the same event, as a
        step that starts and completes at once is one StepRan, not a wait in the queue."""
        if self.state is not JobState.PENDING:
            raise InvalidTransition(f"job {self.id} is {self.state}: a provider is chosen only while PENDING")
        admits = admitted and not self.admitted
        if (self.provider_id, self.provider_type) != (provider_id, provider_type) or admits:
            self._provider_selected(provider_id=provider_id, provider_type=provider_type, admitted=admits)

    @property
    def admitted(self) -> bool:
        return self.admitted_attempt == self.attempt

    def admit(self) -> None:
        """The current attempt gets a slot of its provider: it leaves the queue."""
        if self.state is not JobState.PENDING:
            raise InvalidTransition(f"job {self.id} is {self.state}: only a queued job is admitted")
        if self.held_by is not None:
            raise InvalidTransition(f"job {self.id} is held by {self.held_by}: it is admitted once released")
        if self.provider_type is None:
            raise InvalidTransition(f"job {self.id} has no provider yet")
        if not self.admitted:
            self._admitted(attempt=self.attempt, provider_type=self.provider_type)

    def hold(self, by: str, reason: str = "") -> None:
        """Keeps a queued job out of its line until released (Slurm's ``scontrol hold``,
        a suspended Kubernetes Job): only while it waits for a slot, since an admitted
        job's worker is already being made (cancel that one instead). Holding a held job
        changes nothing: the first hold stands."""
        self._check_waiting(
            "only a job waiting in the queue can be held" + ("" if self.is_terminal else " (cancel it instead)")
        )
        if self.held_by is None:
            self._held(by=by, reason=reason)

    def prioritize(self, priority: int) -> None:
        """A new place in its queue (Slurm's ``scontrol update … priority``): only while it
        waits there, which is all a priority orders. Its spec says the new priority (a
        ``job retry`` of it keeps it)."""
        check_priority(priority)
        self._check_waiting("only a job waiting in the queue changes its priority")
        if priority != self.spec.priority:
            self._prioritized(priority=priority)

    def change_limits(self, timeout_seconds: float, resources: Resources) -> None:
        """A new time limit or resources (Slurm's ``scontrol update TimeLimit=… NumCPUs=…`` of
        a pending job): only while it waits in the queue, since its worker is made with them
        once it is admitted. Its spec says them (a ``job retry`` of it keeps them)."""
        check_limits(timeout_seconds, resources)
        self._check_waiting("only a job waiting in the queue changes its time limit or resources")
        if (timeout_seconds, resources) != (self.spec.timeout_seconds, self.spec.resources):
            self._limits_changed(timeout_seconds=timeout_seconds, resources=asdict(resources))

    def _check_waiting(self, only: str) -> None:
        if self.state is not JobState.PENDING or self.admitted:
            where = self.state if self.state is not JobState.PENDING else "already starting (admitted to a slot)"
            raise InvalidTransition(f"job {self.id} is {where}: {only}")

    def release(self) -> None:
        """A held job goes back into its line, at its place (by priority, then submission)."""
        if self.held_by is None or self.is_terminal:
            raise InvalidTransition(f"job {self.id} is {self.state} and not held: nothing to release")
        self._released(held_by=self.held_by)

    def assign(self, worker_id: str, provider_id: str, provider_type: str) -> None:
        if self.state is JobState.ASSIGNED and self.worker_id == worker_id:
            return
        check_transition("job", self.state, JobState.ASSIGNED, JOB_TRANSITIONS)
        self._assigned(worker_id=worker_id, provider_id=provider_id, provider_type=provider_type)

    def accept(self, worker_id: str) -> None:
        """The worker acknowledged the run-job command: the job is RUNNING."""
        if self.worker_id != worker_id:
            raise InvalidTransition(f"job {self.id} is not assigned to worker {worker_id}")
        if self.state is JobState.RUNNING:
            return
        check_transition("job", self.state, JobState.RUNNING, JOB_TRANSITIONS)
        self._accepted(worker_id=worker_id)
        self._change_state(JobState.RUNNING, reason=f"accepted by worker {worker_id}", exit_code=None)

    def finish(
        self,
        worker_id: str,
        outcome: JobState,
        exit_code: int | None,
        reason: str | None,
        ran: tuple[str, str] | None = None,
        now: datetime | None = None,
        usage: Mapping[str, float] | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        """Records the worker's result; ``ran`` is when the command's process started and
        ended, by the worker's clock, ``usage`` what it used as its worker measured it
        (``cpu_seconds``, ``peak_memory_bytes``; None or a part of it when unknown),
        ``outputs`` the values its command left ($HODEI_OUTPUT; ``outputs_problem``). A
        result that overtakes its ack implies the ack. A failed command with retries left
        sends the job back to the queue instead. A cancelled job keeps no exit code; after
        its cancel, the result says its processes stopped, and how."""
        if outcome not in TERMINAL_STATES:
            raise InvalidTransition(f"{outcome} is not a result")
        used = dict(usage) if usage else None
        left = dict(outputs) if outputs else None
        if self.state is JobState.CANCELLED and self.worker_id == worker_id:
            if not self.stopped:
                self._stopped(worker_id=worker_id, exit_code=exit_code, usage=used)
            return
        if self.state is JobState.ASSIGNED:
            self.accept(worker_id)
        elif self.worker_id != worker_id:
            raise InvalidTransition(f"job {self.id} is not assigned to worker {worker_id}")
        check_transition("job", self.state, outcome, JOB_TRANSITIONS)
        if self._retries_after(outcome, exit_code):
            self._retry(outcome, exit_code, reason, ran, now, used, left)
        else:
            kept = None if outcome is JobState.CANCELLED else exit_code
            reason = self._not_retried(outcome, reason)
            self._change_state(outcome, reason=reason, exit_code=kept, ran=ran, usage=used, outputs=left)

    def _retries_after(self, outcome: JobState, exit_code: int | None) -> bool:
        return (
            outcome in (JobState.FAILED, JobState.TIMEOUT)
            and self.retries_used < self.spec.retries
            and retried(self.spec.retry_on, exit_code, outcome is JobState.TIMEOUT)
        )

    def _not_retried(self, outcome: JobState, reason: str | None) -> str | None:
        """The reason of a failed attempt that had retries left: that its rule passed it
        over, so that a person reading ``job get`` knows why it did not run again."""
        if outcome not in (JobState.FAILED, JobState.TIMEOUT) or self.retries_used >= self.spec.retries:
            return reason
        return f"{reason or outcome.value.lower()}; not retried (--retry-on {','.join(self.spec.retry_on)})"

    def _retry(
        self,
        outcome: JobState,
        exit_code: int | None,
        reason: str | None,
        ran: tuple[str, str] | None,
        now: datetime | None,
        usage: dict[str, float] | None = None,
        outputs: dict[str, str] | None = None,
    ) -> None:
        retry_at = (now or datetime.now(UTC)) + timedelta(seconds=self.spec.retry_pause(self.retries_used))
        what = reason or (f"exit code {exit_code}" if exit_code is not None else outcome.value)
        self._status_changed(
            old_state=self.state.value,
            new_state=JobState.PENDING.value,
            reason=f"attempt {self.attempt} failed ({what}); retry {self.retries_used + 1} of {self.spec.retries}",
            exit_code=exit_code,
            ran_from=ran[0] if ran else None,
            ran_until=ran[1] if ran else None,
            retry_at=retry_at.isoformat(),
            stop_by=None,
            usage=usage,
            outputs=outputs,
        )

    def fail(self, reason: str) -> None:
        check_transition("job", self.state, JobState.FAILED, JOB_TRANSITIONS)
        self._change_state(JobState.FAILED, reason=reason, exit_code=None)

    def time_out(self, reason: str, now: datetime | None = None) -> None:
        """The server enforces the timeout when the worker did not."""
        check_transition("job", self.state, JobState.TIMEOUT, JOB_TRANSITIONS)
        if self._retries_after(JobState.TIMEOUT, None):
            self._retry(JobState.TIMEOUT, None, reason, None, now)
        else:
            self._change_state(JobState.TIMEOUT, reason=self._not_retried(JobState.TIMEOUT, reason), exit_code=None)

    def cancel(self, reason: str, grace: float = 0.0, now: datetime | None = None) -> None:
        """``grace``: seconds a running job's processes get between SIGTERM and SIGKILL
        (0: SIGKILL at once). Its worker is released once it reports them stopped or is
        lost (with no grace, at once): only a RUNNING job's worker has them (one still
        ASSIGNED may not have begun: its worker is released at once, as a queued job has
        none)."""
        if self.is_terminal:
            raise InvalidTransition(f"job {self.id} already ended {self.state}")
        check_transition("job", self.state, JobState.CANCELLED, JOB_TRANSITIONS)
        stop_by = None
        if self.state is JobState.RUNNING:
            stop_by = ((now or datetime.now(UTC)) + timedelta(seconds=grace)).isoformat()
        self._status_changed(
            old_state=self.state.value,
            new_state=JobState.CANCELLED.value,
            reason=reason,
            exit_code=None,
            ran_from=None,
            ran_until=None,
            retry_at=None,
            stop_by=stop_by,
            usage=None,
            outputs=None,
        )

    def signal(self, name: str) -> None:
        """Sends a signal to its command's processes, which go on (or not) as they handle
        it: a running job's only, the attempt running now. Its worker delivers it once."""
        name = check_signal(name)
        if self.state is not JobState.RUNNING:
            raise InvalidTransition(f"job {self.id} is {self.state}: only a running job's processes take a signal")
        self._signalled(signal=name, attempt=self.attempt)

    def exec(self, argv: Sequence[str], timeout_seconds: int) -> int:
        """Asks its worker to run ``argv`` beside its command (`job exec`, checked by
        ``execs.check_exec``): a running job's only, in the attempt running now. The
        request's index."""
        if self.state is not JobState.RUNNING:
            raise InvalidTransition(f"job {self.id} is {self.state}: a command runs only beside a running job's")
        if len(self.execs) >= MOST_EXECS:
            raise LimitReached(f"job {self.id} was given {MOST_EXECS} commands with job exec: no more")
        index = len(self.execs)
        self._exec_requested(index=index, attempt=self.attempt, argv=list(argv), timeout_seconds=timeout_seconds)
        return index

    def exec_ended_already(self, index: int) -> bool:
        """Whether command ``index``'s end is recorded, or there is no such command."""
        return not 0 <= index < len(self.execs) or self.execs[index]

    def exec_ended(self, index: int, exit_code: int, message: str, stdout_bytes: int, stderr_bytes: int) -> bool:
        """Records how a command run beside its own ended, once (its worker sends it again
        until told it arrived). False: nothing to record."""
        if self.exec_ended_already(index):
            return False
        self._exec_ended(
            index=index, exit_code=exit_code, message=message, stdout_bytes=stdout_bytes, stderr_bytes=stderr_bytes
        )
        return True

    @property
    def stop_pending(self) -> bool:
        """Cancelled while running, and its worker has not reported its processes stopped:
        the worker is not done, whatever the time (a silent one is lost, not finished)."""
        return self.stop_by is not None and not self.stopped

    def grace_left(self, now: datetime) -> float | None:
        """Seconds its processes have left until SIGKILL; None when it has none to stop."""
        if self.stop_by is None:
            return None
        return max(0.0, (self.stop_by - now).total_seconds())

    @property
    def can_retry(self) -> bool:
        """Another attempt after a lost worker (retries of a failed command not counted)."""
        return self.attempt - self.retries_used < self.spec.max_attempts

    def requeue(self, reason: str) -> None:
        """Puts the job back to PENDING for another attempt after its worker was lost."""
        check_transition("job", self.state, JobState.PENDING, JOB_TRANSITIONS)
        if not self.can_retry:
            raise InvalidTransition(f"job {self.id} used all {self.spec.max_attempts} attempts")
        self._change_state(JobState.PENDING, reason=reason, exit_code=None)

    def record_logs(self, storage_uri: str, size_bytes: int, entry_count: int) -> None:
        if not self.is_terminal:
            raise InvalidTransition(f"job {self.id} is {self.state}: logs are stored when it ends")
        if self.log_uri is None and not self.logs_expired:
            self._logs_persisted(storage_uri=storage_uri, size_bytes=size_bytes, entry_count=entry_count)

    def store_artifacts(self, worker_id: str, artifacts: Sequence[Mapping[str, Any]]) -> None:
        """Records the files its worker stored for this attempt (``name``, ``size_bytes``,
        ``sha256``), before its result: a worker reports only on its own job."""
        if self.worker_id != worker_id:
            raise InvalidTransition(f"job {self.id} is not assigned to worker {worker_id}")
        if artifacts:
            listed = [{key: artifact[key] for key in ("name", "size_bytes", "sha256")} for artifact in artifacts]
            self._artifacts_stored(attempt=self.attempt, artifacts=listed)

    @property
    def latest_artifacts(self) -> list[dict[str, Any]]:
        """Each name's artifact of the latest attempt that stored one so named."""
        return list({artifact["name"]: artifact for artifact in self.artifacts}.values())

    def expire_artifacts(self) -> None:
        """Its artifacts were deleted: their own time passed (--artifacts-expire)."""
        if self.artifacts:
            self._artifacts_expired()

    def expire_logs(self) -> None:
        """The job's stored log was deleted (retention)."""
        if self.log_uri is not None:
            self._logs_expired(storage_uri=self.log_uri)

    # Events -----------------------------------------------------------------

    @event("JobProviderSelected")
    def _provider_selected(self, provider_id: str, provider_type: str, admitted: bool) -> None:
        self.provider_id = provider_id
        self.provider_type = provider_type
        if admitted:
            self.admitted_attempt = self.attempt

    @event("JobAdmitted")
    def _admitted(self, attempt: int, provider_type: str) -> None:
        self.admitted_attempt = attempt

    @event("JobHeld")
    def _held(self, by: str, reason: str) -> None:
        self.held_by = by
        self.hold_reason = reason

    @event("JobSignalled")
    def _signalled(self, signal: str, attempt: int) -> None:
        pass

    @event("JobExecRequested")
    def _exec_requested(self, index: int, attempt: int, argv: list[str], timeout_seconds: int) -> None:
        self.execs.append(False)

    @event("JobExecEnded")
    def _exec_ended(self, index: int, exit_code: int, message: str, stdout_bytes: int, stderr_bytes: int) -> None:
        self.execs[index] = True

    @event("JobPrioritized")
    def _prioritized(self, priority: int) -> None:
        self.spec = replace(self.spec, priority=priority)

    @event("JobLimitsChanged")
    def _limits_changed(self, timeout_seconds: float, resources: dict[str, Any]) -> None:
        self.spec = replace(self.spec, timeout_seconds=timeout_seconds, resources=Resources(**resources))

    @event("JobReleased")
    def _released(self, held_by: str) -> None:
        self.held_by = None
        self.hold_reason = ""

    @event("JobAssigned")
    def _assigned(self, worker_id: str, provider_id: str, provider_type: str) -> None:
        self.state = JobState.ASSIGNED
        self.worker_id = worker_id
        self.provider_id = provider_id
        self.provider_type = provider_type

    @event("JobAccepted")
    def _accepted(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def _change_state(
        self,
        new_state: JobState,
        reason: str | None,
        exit_code: int | None,
        ran: tuple[str, str] | None = None,
        usage: dict[str, float] | None = None,
        outputs: dict[str, str] | None = None,
    ) -> None:
        self._status_changed(
            old_state=self.state.value,
            new_state=new_state.value,
            reason=reason,
            exit_code=exit_code,
            ran_from=ran[0] if ran else None,
            ran_until=ran[1] if ran else None,
            retry_at=None,
            stop_by=None,
            usage=usage,
            outputs=outputs,
        )

    @event("JobStatusChanged")
    def _status_changed(
        self,
        old_state: str,
        new_state: str,
        reason: str | None,
        exit_code: int | None,
        ran_from: str | None,
        ran_until: str | None,
        retry_at: str | None,
        stop_by: str | None,
        usage: dict[str, float] | None,
        outputs: dict[str, str] | None,
    ) -> None:
        self.state = JobState(new_state)
        self.stop_by = datetime.fromisoformat(stop_by) if stop_by else None
        if self.state is JobState.PENDING or self.state.is_terminal:  # an attempt ended
            self.outputs = dict(outputs or {})
        if self.state is JobState.PENDING:
            self.attempt += 1
            self.worker_id = None
            self.retry_at = datetime.fromisoformat(retry_at) if retry_at else None
            self.retries_used += retry_at is not None
            return
        if self.state.is_terminal:
            self.exit_code = exit_code
            if self.state is not JobState.SUCCEEDED:
                self.error_message = reason

    @event("JobStopped")
    def _stopped(self, worker_id: str, exit_code: int | None, usage: dict[str, float] | None) -> None:
        """The cancelled job's worker reported its processes ended (``exit_code``: how,
        e.g. 143 after SIGTERM, 137 killed at the end of the grace; ``usage``: what they
        used, as for a finished attempt)."""
        self.stopped = True

    @event("JobLogsPersisted")
    def _logs_persisted(self, storage_uri: str, size_bytes: int, entry_count: int) -> None:
        self.log_uri = storage_uri

    @event("JobLogsExpired")
    def _logs_expired(self, storage_uri: str) -> None:
        """The job's output went: its log, and its artifacts with it."""
        self.log_uri = None
        self.logs_expired = True
        self.artifacts = []

    @event("JobArtifactsExpired")
    def _artifacts_expired(self) -> None:
        self.artifacts = []
        self.artifacts_expired = True

    @event("JobArtifactsStored")
    def _artifacts_stored(self, attempt: int, artifacts: list[dict[str, Any]]) -> None:
        self.artifacts = [*self.artifacts, *({**artifact, "attempt": attempt} for artifact in artifacts)]


# Event versions: the library calls an upcaster when it reads an older payload. See the
# README, "Changing an event".
#
# JobStatusChanged version 1 had no ran_from/ran_until (the command's own start and end,
# reported by the worker).
def _status_changed_v1_to_v2(state: dict[str, Any]) -> None:
    state.setdefault("ran_from", None)
    state.setdefault("ran_until", None)


# Version 2 had no retry_at (a failed command was never retried).
def _status_changed_v2_to_v3(state: dict[str, Any]) -> None:
    state.setdefault("retry_at", None)


# Version 3 had no stop_by (a cancelled job's worker was released at once).
def _status_changed_v3_to_v4(state: dict[str, Any]) -> None:
    state.setdefault("stop_by", None)


# Version 4 had no usage (the CPU seconds and peak memory a finished attempt's worker measured).
def _status_changed_v4_to_v5(state: dict[str, Any]) -> None:
    state.setdefault("usage", None)


# Version 5 had no outputs (the values an attempt's command left in $HODEI_OUTPUT).
def _status_changed_v5_to_v6(state: dict[str, Any]) -> None:
    state.setdefault("outputs", None)


Job.JobStatusChanged.class_version = 6  # type: ignore[attr-defined]
Job.JobStatusChanged.upcast_v1_v2 = staticmethod(_status_changed_v1_to_v2)  # type: ignore[attr-defined]
Job.JobStatusChanged.upcast_v2_v3 = staticmethod(_status_changed_v2_to_v3)  # type: ignore[attr-defined]
Job.JobStatusChanged.upcast_v3_v4 = staticmethod(_status_changed_v3_to_v4)  # type: ignore[attr-defined]
Job.JobStatusChanged.upcast_v4_v5 = staticmethod(_status_changed_v4_to_v5)  # type: ignore[attr-defined]
Job.JobStatusChanged.upcast_v5_v6 = staticmethod(_status_changed_v5_to_v6)  # type: ignore[attr-defined]


# JobStopped version 1 had no usage.
def _stopped_v1_to_v2(state: dict[str, Any]) -> None:
    state.setdefault("usage", None)


Job.JobStopped.class_version = 2  # type: ignore[attr-defined]
Job.JobStopped.upcast_v1_v2 = staticmethod(_stopped_v1_to_v2)  # type: ignore[attr-defined]


# JobProviderSelected version 1 had no admitted (every job waited in its provider's queue
# for a JobAdmitted).
def _provider_selected_v1_to_v2(state: dict[str, Any]) -> None:
    state.setdefault("admitted", False)


Job.JobProviderSelected.class_version = 2  # type: ignore[attr-defined]
Job.JobProviderSelected.upcast_v1_v2 = staticmethod(_provider_selected_v1_to_v2)  # type: ignore[attr-defined]

# JobCreated version 1 carried the spec's fields at the top level and had no secrets.
_V1_SPEC_FIELDS = (
    "name",
    "command",
    "args",
    "env",
    "timeout_seconds",
    "provider",
    "resources",
    "labels",
    "working_dir",
    "max_attempts",
)


def _created_v1_to_v2(state: dict[str, Any]) -> None:
    state["spec"] = {key: state.pop(key) for key in _V1_SPEC_FIELDS if key in state}
    state["sealed_secrets"] = {}


# Version 2 had no retry_of (no job was submitted again).
def _created_v2_to_v3(state: dict[str, Any]) -> None:
    state.setdefault("retry_of", None)


# Version 3 had no request_digest (no job was submitted with an idempotency key).
def _created_v3_to_v4(state: dict[str, Any]) -> None:
    state.setdefault("request_digest", None)


Job.JobCreated.class_version = 4  # type: ignore[attr-defined]
Job.JobCreated.upcast_v1_v2 = staticmethod(_created_v1_to_v2)  # type: ignore[attr-defined]
Job.JobCreated.upcast_v2_v3 = staticmethod(_created_v2_to_v3)  # type: ignore[attr-defined]
Job.JobCreated.upcast_v3_v4 = staticmethod(_created_v3_to_v4)  # type: ignore[attr-defined]
