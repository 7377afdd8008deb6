"""The Saga aggregate: the durable record of a saga's progress, step by step.

The saga engine (``hodei.sagas``) decides what to do next; this aggregate only
accepts moves that make sense and records them. ``sagas``, ``saga_steps`` and
``saga_audit_events`` are projections of its events.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, derived_id
from hodei.errors import InvalidTransition


class SagaType(StrEnum):
    PROVISIONING = "PROVISIONING"
    EXECUTION = "EXECUTION"
    RECOVERY = "RECOVERY"


class SagaState(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class StepState(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


@dataclass
class StepRecord:
    name: str
    order: int
    state: StepState = StepState.PENDING
    retry_count: int = 0
    error: str | None = None
    deadline_at: str | None = None


class Saga(HodeiAggregate):
    @staticmethod
    def create_id(saga_type: str, correlation_id: str, attempt: int) -> UUID:
        return derived_id("saga", saga_type, correlation_id, attempt)

    @event("SagaStarted")
    def __init__(
        self,
        saga_type: str,
        correlation_id: str,
        attempt: int,
        steps: list[str],
        context: dict[str, Any],
        moves_at_once: bool = False,
    ) -> None:
        """``moves_at_once``: the transaction that starts the saga also moves it as far as
        it goes (so the delivery of SagaStarted has nothing to do). False in the events of
        older servers, which left that to the delivery."""
        self.saga_type = SagaType(saga_type)
        self.correlation_id = correlation_id
        self.attempt = attempt
        self.steps = [StepRecord(name=name, order=order) for order, name in enumerate(steps)]
        self.context = dict(context)
        self.state = SagaState.IN_PROGRESS
        self.failure: str | None = None

    # Queries ----------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return self.state in (SagaState.COMPLETED, SagaState.FAILED)

    @property
    def active_step(self) -> StepRecord | None:
        """The step that is running or waiting, if any."""
        return self._first_in(StepState.IN_PROGRESS, StepState.COMPENSATING)

    @property
    def next_step(self) -> StepRecord | None:
        return self._first_in(StepState.PENDING)

    @property
    def failed_step(self) -> StepRecord | None:
        """The step that failed, waiting to be retried (``deadline_at``) or for good."""
        return self._first_in(StepState.FAILED)

    def _first_in(self, *states: StepState) -> StepRecord | None:
        return next((step for step in self.steps if step.state in states), None)

    def step(self, order: int) -> StepRecord:
        return self.steps[order]

    @property
    def failed_for_good(self) -> StepRecord | None:
        """The step whose failure ended the forward run (no retry scheduled)."""
        for step in self.steps:
            if step.state is StepState.FAILED and step.deadline_at is None:
                return step
        return None

    def to_compensate(self, include_failed: bool) -> StepRecord | None:
        """The next step to undo: the failed step itself first when ``include_failed``
        (it may have half-happened), then completed steps latest first."""
        failed = self.failed_for_good
        if include_failed and failed is not None:
            return failed
        for step in reversed(self.steps):
            if step.state is StepState.COMPLETED:
                return step
        return None

    # Commands ---------------------------------------------------------------

    def next_retry_count(self, order: int) -> int:
        """The retry count the step gets when it starts now: 0 the first time, one more
        after each failure."""
        step = self._require_running(order)
        if step.state is StepState.PENDING:
            return 0
        if step.state is StepState.FAILED:
            return step.retry_count + 1
        raise InvalidTransition(f"saga {self.id} step {step.name} is {step.state}, cannot start")

    def start_step(self, order: int, deadline_at: str | None, unmissed: bool = False) -> None:
        """``unmissed``: a WAIT whose start committed only if no event of its job came
        after the start read the job (``HodeiStore.keep_unmoved``), so every event that
        can satisfy it is delivered after it and pokes it: its own delivery has nothing to
        re-check. False in the events of older servers, and for the other steps."""
        retry_count = self.next_retry_count(order)
        self._step_started(
            step_name=self.steps[order].name,
            step_order=order,
            retry_count=retry_count,
            deadline_at=deadline_at,
            unmissed=unmissed,
        )

    def run_step(self, order: int, started_at: str, output: dict[str, Any]) -> None:
        """Records a step that started and completed in one go (a LOCAL step, or a WAIT
        met at once) as one event: the audit trail still shows it start and complete."""
        retry_count = self.next_retry_count(order)
        self._step_ran(
            step_name=self.steps[order].name,
            step_order=order,
            retry_count=retry_count,
            started_at=started_at,
            output=output,
        )

    def complete_step(self, order: int, output: dict[str, Any]) -> None:
        step = self._require_running(order)
        if step.state is not StepState.IN_PROGRESS:
            raise InvalidTransition(f"saga {self.id} step {step.name} is {step.state}, cannot complete")
        self._step_completed(step_name=step.name, step_order=order, output=output)

    def fail_step(self, order: int, error: str, retry_at: str | None) -> None:
        """``retry_at`` set means another attempt follows at that time; None means final."""
        step = self._require_running(order)
        if step.state is not StepState.IN_PROGRESS:
            raise InvalidTransition(f"saga {self.id} step {step.name} is {step.state}, cannot fail")
        self._step_failed(
            step_name=step.name,
            step_order=order,
            error=error,
            retry_count=step.retry_count,
            retry_at=retry_at,
        )

    def start_compensation(self, order: int) -> None:
        if self.is_finished:
            raise InvalidTransition(f"saga {self.id} is {self.state}")
        step = self.steps[order]
        if step.state is not StepState.COMPLETED and step is not self.failed_for_good:
            raise InvalidTransition(f"saga {self.id} step {step.name} is {step.state}, cannot compensate")
        self._compensation_started(step_name=step.name, step_order=order)

    def finish_compensation(self, order: int) -> None:
        step = self._require_compensating(order)
        self._step_compensated(step_name=step.name, step_order=order)

    def fail_compensation(self, order: int, error: str) -> None:
        step = self._require_compensating(order)
        self._compensation_failed(step_name=step.name, step_order=order, error=error)

    def complete(self, then: str | None) -> None:
        """``then``: the saga started in the same transaction to follow this one, if any
        (recorded so that the delivery of SagaCompleted knows it has nothing to start)."""
        if self.state is not SagaState.IN_PROGRESS or self.next_step or self.active_step:
            raise InvalidTransition(f"saga {self.id} cannot complete: it is {self.state} with steps left")
        self._completed(then=then)

    def fail(self, reason: str) -> None:
        if self.is_finished:
            raise InvalidTransition(f"saga {self.id} is already {self.state}")
        if self.active_step is not None:
            raise InvalidTransition(f"saga {self.id} step {self.active_step.name} is still running")
        self._failed(reason=reason)

    def _require_running(self, order: int) -> StepRecord:
        if self.state is not SagaState.IN_PROGRESS:
            raise InvalidTransition(f"saga {self.id} is {self.state}")
        return self.steps[order]

    def _require_compensating(self, order: int) -> StepRecord:
        step = self.steps[order]
        if step.state is not StepState.COMPENSATING:
            raise InvalidTransition(f"saga {self.id} step {step.name} is {step.state}, not COMPENSATING")
        return step

    # Events -----------------------------------------------------------------

    @event("StepStarted")
    def _step_started(
        self, step_name: str, step_order: int, retry_count: int, deadline_at: str | None, unmissed: bool = False
    ) -> None:
        step = self.steps[step_order]
        step.state = StepState.IN_PROGRESS
        step.retry_count = retry_count
        step.deadline_at = deadline_at
        step.error = None

    @event("StepCompleted")
    def _step_completed(self, step_name: str, step_order: int, output: dict[str, Any]) -> None:
        self.steps[step_order].state = StepState.COMPLETED
        self.steps[step_order].deadline_at = None
        self.context.update(output)

    @event("StepRan")
    def _step_ran(
        self, step_name: str, step_order: int, retry_count: int, started_at: str, output: dict[str, Any]
    ) -> None:
        step = self.steps[step_order]
        step.state = StepState.COMPLETED
        step.retry_count = retry_count
        step.deadline_at = None
        step.error = None
        self.context.update(output)

    @event("StepFailed")
    def _step_failed(self, step_name: str, step_order: int, error: str, retry_count: int, retry_at: str | None) -> None:
        step = self.steps[step_order]
        step.state = StepState.FAILED
        step.error = error
        step.deadline_at = retry_at
        if retry_at is None:
            self.failure = self.failure or f"step {step_name} failed: {error}"

    @event("CompensationStarted")
    def _compensation_started(self, step_name: str, step_order: int) -> None:
        self.state = SagaState.COMPENSATING
        self.steps[step_order].state = StepState.COMPENSATING

    @event("StepCompensated")
    def _step_compensated(self, step_name: str, step_order: int) -> None:
        self.steps[step_order].state = StepState.COMPENSATED

    @event("CompensationFailed")
    def _compensation_failed(self, step_name: str, step_order: int, error: str) -> None:
        self.steps[step_order].state = StepState.COMPENSATION_FAILED
        self.steps[step_order].error = error
        self.failure = f"{self.failure or 'saga failed'}; compensation of {step_name} failed: {error}"

    @event("SagaCompleted")
    def _completed(self, then: str | None = None) -> None:  # None also for events of older servers
        self.state = SagaState.COMPLETED

    @event("SagaFailed")
    def _failed(self, reason: str) -> None:
        self.state = SagaState.FAILED
        self.failure = reason
