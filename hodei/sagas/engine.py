"""The saga engine: runs a saga one step at a time, durably.

Everything the engine decides is an event on the Saga aggregate, saved together with
the events of the aggregates a step changed (one transaction). The outbox drives it:
each saga event is delivered to ``advance``, which moves the saga as far as it can
without the outside world and stops at the next step that needs it. A saga is moved
that far already in the transaction that starts it, and a saga that completes starts
its follower (``SagaDefinition.then``) in its own last transaction: no relay round trip
just to begin.

Step kinds:
- LOCAL: changes aggregates only; runs inline, recorded as one StepRan (started and
  completed) saved with what it changed. A WAIT met when it starts is recorded so too.
- ACTION: calls the outside world (a provider). Its StepStarted is committed first;
  the delivery of that StepStarted runs the action, under the step's timeout. After
  a crash the row is delivered again, so actions must be idempotent ("already
  exists" is success); a completed step is never run again.
- WAIT: waits for other aggregates to reach a state, until a deadline. It is
  re-checked whenever an event about the saga's job arrives (``poke``), and failed
  by the sweeper (``expire``) when its deadline passes. Its start commits only if no
  event of the job came meanwhile (``HodeiStore.keep_unmoved``), so no event that can
  satisfy it is handled before it is recorded: its StepStarted is not delivered back.

A step that fails is retried per its policy (the retry's StepFailed row is delivered
at ``retry_at``); when it fails for good, completed steps are compensated in reverse
order, each recorded, and the saga ends FAILED with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID

from hodei.domain.base import HodeiAggregate
from hodei.domain.saga import Saga, SagaState, SagaType, StepRecord, StepState
from hodei.errors import ConcurrencyConflict, HodeiError, StepTimeout, StoreUnavailable
from hodei.logfields import about, carried
from hodei.relay import backoff_seconds
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.recorder import Ack

log = logging.getLogger(__name__)

R = TypeVar("R")


class StepKind(Enum):
    LOCAL = "local"
    ACTION = "action"
    WAIT = "wait"


@dataclass(frozen=True)
class StepInput:
    """What a step (or compensation) gets: one dataclass, so fields can be added."""

    saga_id: UUID
    saga_type: SagaType
    job_id: str
    attempt: int
    context: Mapping[str, Any]
    retry_count: int
    failure: str | None = None
    failed_step: str | None = None


@dataclass(frozen=True)
class StepResult:
    """Output merged into the saga context, and aggregates saved with the step."""

    output: dict[str, Any] = field(default_factory=dict)
    changed: tuple[HodeiAggregate, ...] = ()


StepFunction = Callable[[StepInput], StepResult]
# A wait's check: a result when done, None while waiting; raising fails the step.
WaitCheck = Callable[[StepInput], StepResult | None]


def _records_nothing(_input: StepInput, _output: dict[str, Any]) -> Sequence[HodeiAggregate]:
    return ()


@dataclass(frozen=True)
class Effect:
    """Something done to the outside world, then recorded on aggregates.

    ``perform`` must be idempotent (it runs again after a crash); its output is kept
    while the save is retried. ``record`` loads and changes aggregates and runs again
    on every retry of the save, so it always sees the latest state.
    """

    perform: Callable[[StepInput], dict[str, Any]]
    record: Callable[[StepInput, dict[str, Any]], Sequence[HodeiAggregate]] = _records_nothing


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 0


@dataclass(frozen=True)
class StepDefinition:
    """A LOCAL or WAIT step has ``run``; an ACTION step has ``effect``."""

    name: str
    kind: StepKind
    run: StepFunction | WaitCheck | None = None
    effect: Effect | None = None
    # Seconds, or a function of the saga context (a wait for a job's result depends on
    # the job's own timeout).
    timeout: float | Callable[[Mapping[str, Any]], float] = 30.0
    retry: RetryPolicy = RetryPolicy()
    compensation: Effect | None = None
    # Also undo this step when it is the one that failed (it may have half-happened).
    compensate_when_failed: bool = False
    # What a WAIT step past its deadline means, for people (the saga's error says it);
    # a function of the step's input when the reason must be looked up (a worker's output).
    expired: str | Callable[[StepInput], str] = "no progress by the deadline"

    def __post_init__(self) -> None:
        if (self.kind is StepKind.ACTION) != (self.effect is not None) or (self.run is None) == (self.effect is None):
            raise ValueError(f"step {self.name}: ACTION steps need an effect, other steps a run function")

    def timeout_for(self, context: Mapping[str, Any]) -> float:
        return self.timeout(context) if callable(self.timeout) else self.timeout


@dataclass(frozen=True)
class SagaDefinition:
    saga_type: SagaType
    steps: tuple[StepDefinition, ...]
    # The saga started, with this one's context, in the transaction where this one completes.
    then: SagaType | None = None

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]


def now() -> datetime:
    return datetime.now(UTC)


# Extra time a sweeper gives an ACTION past its own timeout before declaring it lost
# (a crashed process); the in-process timeout normally fires first.
ACTION_DEADLINE_MARGIN = 15.0


# Seconds a worker's report waits for a handler of its job in this process (``change_job``).
CHANGE_PATIENCE = 0.5


class _OneAtATime:
    """A lock per job, held by whichever of the engine's entry points is moving one of
    its sagas in this process. Without it, the delivery of a saga's own event and a poke
    by its job's event load the same saga version and one loses the race at commit: a
    whole transaction rolled back and run again. Across servers the optimistic check on
    the saga's version still decides."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def __call__(self, job_id: str, patience: float = -1) -> Iterator[None]:
        """Holds the job's lock; past ``patience`` seconds (negative: none) it goes on
        without it, the optimistic check deciding as across servers."""
        with self._lock:
            lock, users = self._held.get(job_id, (None, 0))
            lock = lock or threading.Lock()
            self._held[job_id] = (lock, users + 1)
        try:
            held = lock.acquire(timeout=patience)
            try:
                yield
            finally:
                if held:
                    lock.release()
        finally:
            with self._lock:
                users = self._held[job_id][1] - 1
                if users:
                    self._held[job_id] = (lock, users)
                else:
                    del self._held[job_id]


@dataclass
class _Work:
    """Changes collected while moving one saga, saved in one transaction."""

    saga: Saga
    changed: dict[UUID, HodeiAggregate] = field(default_factory=dict)
    # Sagas started because this one completed (``SagaDefinition.then``), saved with it.
    followers: list[Saga] = field(default_factory=list)

    def add(self, aggregates: Sequence[HodeiAggregate]) -> None:
        for aggregate in aggregates:
            self.changed[aggregate.id] = aggregate

    @property
    def sagas(self) -> list[Saga]:
        return [self.saga, *self.followers]

    def aggregates(self) -> list[HodeiAggregate]:
        return [*self.sagas, *self.changed.values()]


class SagaEngine:
    def __init__(
        self,
        store: HodeiStore,
        definitions: Mapping[SagaType, SagaDefinition],
        clock: Callable[[], datetime] = now,
        after_commit: Callable[[Saga], None] | None = None,
    ) -> None:
        self.store = store
        self.definitions = definitions
        self.clock = clock
        # Test hook: called after each committed advance (crash-injection tests kill here).
        self.after_commit = after_commit
        self._actions = ThreadPoolExecutor(max_workers=16, thread_name_prefix="hodei-step")
        self._serial = _OneAtATime()
        self._pokeable = sorted({step.name for d in definitions.values() for step in d.steps if step.effect is None})

    def close(self) -> None:
        self._actions.shutdown(wait=False, cancel_futures=True)

    def runs_inline(self, step_name: str) -> bool:
        """Whether a step of this name is LOCAL in every saga: it ran in the transaction
        that recorded its StepStarted, so delivering that event finds nothing to do."""
        kinds = {step.kind for d in self.definitions.values() for step in d.steps if step.name == step_name}
        return kinds == {StepKind.LOCAL}

    # Entry points -----------------------------------------------------------

    def start(
        self, saga_type: SagaType, job_id: str, attempt: int, context: Mapping[str, Any], ack: Ack | None
    ) -> UUID:
        """Starts a saga and moves it as far as it goes at once, in the same transaction;
        starting the same (type, job, attempt) twice is a no-op."""
        saga_id = Saga.create_id(saga_type.value, job_id, attempt)

        def attempt_start() -> tuple[_Work | None, Sequence[HodeiAggregate]]:
            if self.store.find(Saga, saga_id) is not None:
                return None, []  # started already (a redelivery, or another server)
            work = _Work(self._new_saga(saga_type, job_id, attempt, context))
            self._progress(work, None, {})
            return work, work.aggregates()

        with self._serial(job_id):
            work = self.store.command(Meta(actor=SYSTEM, correlation_id=job_id, ack=ack), attempt_start)
        if work is not None:
            self._committed(work)
        return saga_id

    def follow(self, saga: Saga, ack: Ack | None) -> None:
        """Starts the follower of a saga an older server completed: it left that to the
        delivery of SagaCompleted (starting a saga that exists is a no-op)."""
        then = self.definitions[saga.saga_type].then
        if then is not None:
            self.start(then, saga.correlation_id, saga.attempt, saga.context, ack)

    def _new_saga(self, saga_type: SagaType, job_id: str, attempt: int, context: Mapping[str, Any]) -> Saga:
        return Saga(
            saga_type=saga_type.value,
            correlation_id=job_id,
            attempt=attempt,
            steps=self.definitions[saga_type].step_names,
            context=dict(context),
            moves_at_once=True,
        )

    def advance(
        self,
        saga_id: UUID,
        job_id: str,
        ack: Ack | None = None,
        started: tuple[int, int] | None = None,
    ) -> None:
        """Moves the saga on. ``started`` = (step order, retry count) of the StepStarted
        being delivered: only that delivery may run the step's action."""
        performed: dict[tuple[int, int], dict[str, Any] | Exception] = {}

        def attempt() -> tuple[_Work, Sequence[HodeiAggregate]]:
            work = _Work(self.store.load(Saga, saga_id))
            self._progress(work, started, performed)
            return work, work.aggregates()

        with self._serial(job_id):
            work = self.store.command(Meta(actor=SYSTEM, correlation_id=job_id, ack=ack), attempt)
        self._committed(work)

    def poke(self, job_id: str, ack: Ack | None) -> None:
        """Re-checks the job's waiting steps after an event that may satisfy them. Only
        sagas at a step without an effect can move on a poke: an ACTION or a compensation
        runs in the delivery of its own StepStarted or CompensationStarted. The job's
        sagas are in hand with the rest of its flow (``HodeiStore.command``)."""
        self._poke(Meta(actor=SYSTEM, correlation_id=job_id, ack=ack), _no_change, unmoved=False)

    def change_job(self, meta: Meta, change: Callable[[], tuple[R, Sequence[HodeiAggregate]]]) -> R:
        """A command about the job of ``meta.correlation_id`` (``change``: its decision,
        returning its result and what to save, as ``HodeiStore.command``'s) that makes, in
        its own transaction, the poke its event's delivery would make: one commit instead
        of two, and no delivery. It commits only on an unmoved flow
        (``HodeiStore.keep_unmoved``), so a WAIT started meanwhile is found by a retry, as
        the WAIT's own start finds the change. It waits for the job's lock only briefly: a
        handler holding it may be running an effect (stopping the worker whose report this
        is) that waits for this very report."""
        return self._poke(meta, change, CHANGE_PATIENCE, unmoved=True)

    def _poke(
        self,
        meta: Meta,
        change: Callable[[], tuple[R, Sequence[HodeiAggregate]]],
        patience: float = -1,
        *,
        unmoved: bool,
    ) -> R:
        job_id = meta.correlation_id
        assert job_id is not None, "a poke is about a job"
        moved: list[_Work] = []

        def attempt() -> tuple[R, Sequence[HodeiAggregate]]:
            moved.clear()
            result, decided = change()
            changed = list(decided)
            if unmoved:
                self.store.keep_unmoved()
            for saga in self.store.held(Saga):
                if not self._moves_on_poke(saga):
                    continue
                work = _Work(saga)
                self._progress(work, None, {})
                if work.saga.pending_events or work.changed:
                    moved.append(work)
                    changed.extend(work.aggregates())
            return result, changed

        with self._serial(job_id, patience):
            result = self.store.command(meta, attempt)
        for work in moved:
            self._committed(work)
        return result

    def _moves_on_poke(self, saga: Saga) -> bool:
        """Running, and at (or waiting to retry) a step without an effect."""
        if saga.state is not SagaState.IN_PROGRESS:
            return False
        at = saga.active_step or saga.failed_step
        return at is not None and at.name in self._pokeable

    def _committed(self, work: _Work) -> None:
        if self.after_commit is not None:
            for saga in work.sagas:
                self.after_commit(saga)

    def expire(self, saga_id: UUID, job_id: str, step_order: int) -> None:
        """The sweeper found the step past its deadline. A WAIT is checked once more first:
        what it waits for may have come in time, its poke's delivery not yet (a busy
        relay); then it is met, not expired."""

        def attempt() -> tuple[_Work, Sequence[HodeiAggregate]]:
            work = _Work(self.store.load(Saga, saga_id))
            step = work.saga.step(step_order)
            deadline = step.deadline_at
            if step.state is StepState.IN_PROGRESS and deadline and datetime.fromisoformat(deadline) <= self.clock():
                definition = self.definitions[work.saga.saga_type].steps[step_order]
                if definition.effect is None and self._run_active(work, step, definition, None, {}):
                    self._progress(work, None, {})
                    return work, work.aggregates()
                expired = definition.expired
                what = expired(self._input(work.saga, step)) if callable(expired) else expired
                self._fail(work, step, definition, StepTimeout(f"{what} {deadline}"), retry=False)
                self._progress(work, None, {})
            return work, work.aggregates()

        with self._serial(job_id):
            work = self.store.command(Meta(actor=SYSTEM, correlation_id=job_id), attempt)
        self._committed(work)

    def abort(self, saga_id: UUID, job_id: str, reason: str) -> None:
        """Gives up on a saga whose delivery was dead-lettered: fail the step it is at and
        compensate, so the job still ends. A saga between steps (its SagaStarted, or the
        StepFailed of a retry, was the lost delivery) has its next step started and failed
        with the reason; a compensation that was lost is recorded as failed."""

        def attempt() -> tuple[Saga, Sequence[HodeiAggregate]]:
            work = _Work(self.store.load(Saga, saga_id))
            saga = work.saga
            definitions = self.definitions[saga.saga_type].steps
            if saga.state is SagaState.IN_PROGRESS and saga.active_step is None and saga.failed_for_good is None:
                upcoming = saga.failed_step or saga.next_step
                if upcoming is not None:
                    self._start(work, upcoming, definitions[upcoming.order])
            step = saga.active_step
            if step is None:
                return saga, work.aggregates()
            if step.state is StepState.IN_PROGRESS:
                self._fail(work, step, definitions[step.order], HodeiError(reason), retry=False)
            else:
                saga.fail_compensation(step.order, reason)
            self._progress(work, None, {})
            return saga, work.aggregates()

        with self._serial(job_id):
            self.store.command(Meta(actor=SYSTEM, correlation_id=job_id), attempt)

    # The state machine --------------------------------------------------------

    def _input(self, saga: Saga, step: StepRecord) -> StepInput:
        failed = saga.failed_for_good
        return StepInput(
            saga_id=saga.id,
            saga_type=saga.saga_type,
            job_id=saga.correlation_id,
            attempt=saga.attempt,
            context=saga.context,
            retry_count=step.retry_count,
            failure=saga.failure,
            failed_step=failed.name if failed else None,
        )

    def _progress(
        self,
        work: _Work,
        started: tuple[int, int] | None,
        performed: dict[tuple[int, int], dict[str, Any] | Exception],
    ) -> None:
        """Moves the saga as far as it can go now; what is logged meanwhile is about it."""
        with about(saga_id=work.saga.id, job_id=work.saga.correlation_id):
            self._move(work, started, performed)

    def _move(
        self,
        work: _Work,
        started: tuple[int, int] | None,
        performed: dict[tuple[int, int], dict[str, Any] | Exception],
    ) -> None:
        saga = work.saga
        definition = self.definitions[saga.saga_type]
        while not saga.is_finished:
            step = saga.active_step
            if step is not None:
                if step.state is StepState.COMPENSATING:
                    if not self._compensate(work, step, definition.steps[step.order], started, performed):
                        return
                    continue
                if not self._run_active(work, step, definition.steps[step.order], started, performed):
                    return
                continue
            if saga.state is SagaState.COMPENSATING or saga.failed_for_good is not None:
                self._unwind(work)
                continue
            retrying = saga.failed_step
            if retrying is not None and retrying.deadline_at is not None:
                # Waiting to retry: the StepFailed row is delivered at retry_at.
                if datetime.fromisoformat(retrying.deadline_at) > self.clock():
                    return
                if not self._begin(work, retrying, definition.steps[retrying.order]):
                    return
                continue
            pending = saga.next_step
            if pending is None:
                saga.complete(then=definition.then.value if definition.then else None)
                if definition.then is not None:
                    self._start_follower(work, definition.then)
                return
            if not self._begin(work, pending, definition.steps[pending.order]):
                return

    def _begin(self, work: _Work, step: StepRecord, definition: StepDefinition) -> bool:
        """Starts a step. One without an effect (LOCAL, WAIT) is tried at once: done, it
        is recorded as one StepRan; not met yet (a WAIT), its StepStarted is recorded and
        it waits (False); failed, StepStarted and StepFailed. An ACTION gets its
        StepStarted, whose delivery runs it."""
        if definition.effect is not None:
            self._start(work, step, definition)
            return True
        saga = work.saga
        started_at = self.clock()
        outcome = self._try(definition, replace(self._input(saga, step), retry_count=saga.next_retry_count(step.order)))
        if isinstance(outcome, StepResult):
            work.add(outcome.changed)
            saga.run_step(step.order, started_at.isoformat(), outcome.output)
            return True
        if outcome is None:
            # Not met: waits for an event that pokes it. One committed while this try ran
            # was handled on a read without the wait, so this start commits only if none
            # came (else the try runs again and sees it); its delivery then has nothing to do.
            self.store.keep_unmoved()
            self._start(work, step, definition, unmissed=True)
            return False
        self._start(work, step, definition)
        self._fail(work, step, definition, outcome, retry=True)
        return True

    @staticmethod
    def _try(definition: StepDefinition, step_input: StepInput) -> StepResult | Exception | None:
        """Runs a LOCAL step or a WAIT's check: its result, None (not met yet), or the
        exception that fails it. A conflict or an outage is not the step's failure: the
        whole delivery is tried again."""
        assert definition.run is not None
        try:
            return definition.run(step_input)
        except (ConcurrencyConflict, StoreUnavailable):
            raise
        except Exception as exc:
            _log_unexpected(definition.name, exc)
            return exc

    def _start_follower(self, work: _Work, then: SagaType) -> None:
        saga = work.saga
        follower = _Work(self._new_saga(then, saga.correlation_id, saga.attempt, saga.context), work.changed)
        self._progress(follower, None, {})
        work.followers.extend(follower.sagas)

    def _start(self, work: _Work, step: StepRecord, definition: StepDefinition, unmissed: bool = False) -> None:
        timeout = definition.timeout_for(work.saga.context)
        if definition.kind is StepKind.LOCAL or not math.isfinite(timeout):
            deadline = None  # a WAIT without a timeout waits as long as it takes
        elif definition.kind is StepKind.ACTION:
            deadline = self.clock() + timedelta(seconds=timeout + ACTION_DEADLINE_MARGIN)
        else:
            deadline = self.clock() + timedelta(seconds=timeout)
        work.saga.start_step(step.order, deadline.isoformat() if deadline else None, unmissed)

    def _run_active(
        self,
        work: _Work,
        step: StepRecord,
        definition: StepDefinition,
        started: tuple[int, int] | None,
        performed: dict[tuple[int, int], dict[str, Any] | Exception],
    ) -> bool:
        """Runs or checks the active step. False when it must wait for a later delivery."""
        saga = work.saga
        step_input = self._input(saga, step)
        if definition.effect is not None:
            key = (step.order, step.retry_count)
            if started != key:
                # Only the delivery of this step's own StepStarted runs the effect.
                return False
            timeout = definition.timeout_for(saga.context)
            outcome = self._perform(definition.name, definition.effect, step_input, timeout, performed, key)
            if isinstance(outcome, Exception):
                self._fail(work, step, definition, outcome, retry=True)
                return True
            work.add(definition.effect.record(step_input, outcome))
            saga.complete_step(step.order, outcome)
            return True
        result = self._try(definition, step_input)
        if isinstance(result, Exception):
            self._fail(work, step, definition, result, retry=True)
            return True
        if result is None:
            return False
        work.add(result.changed)
        saga.complete_step(step.order, result.output)
        return True

    def _perform(
        self,
        name: str,
        effect: Effect,
        step_input: StepInput,
        timeout: float,
        performed: dict[tuple[int, int], dict[str, Any] | Exception],
        key: tuple[int, int],
    ) -> dict[str, Any] | Exception:
        if key not in performed:
            future = self._actions.submit(carried(self.store.sharing(effect.perform)), step_input)
            try:
                performed[key] = future.result(timeout=timeout)
            except FutureTimeout:
                performed[key] = StepTimeout(f"{name} timed out after {timeout:g}s")
            except StoreUnavailable:
                raise  # the database went away: the delivery runs the (idempotent) action again
            except Exception as exc:
                _log_unexpected(name, exc)
                performed[key] = exc
        return performed[key]

    def _fail(self, work: _Work, step: StepRecord, definition: StepDefinition, exc: Exception, *, retry: bool) -> None:
        retryable = retry and getattr(exc, "retryable", False) and step.retry_count < definition.retry.max_retries
        retry_at = None
        if retryable:
            retry_at = (self.clock() + timedelta(seconds=backoff_seconds(step.retry_count + 1))).isoformat()
        message = str(exc) or type(exc).__name__
        work.saga.fail_step(step.order, message, retry_at)

    def _unwind(self, work: _Work) -> None:
        """Starts the next compensation (reverse order), or ends the saga."""
        saga = work.saga
        failed = saga.failed_for_good
        definition = self.definitions[saga.saga_type]
        include_failed = failed is not None and definition.steps[failed.order].compensate_when_failed
        step = saga.to_compensate(include_failed)
        if step is None:
            saga.fail(saga.failure or "saga failed")
            return
        saga.start_compensation(step.order)

    def _compensate(
        self,
        work: _Work,
        step: StepRecord,
        definition: StepDefinition,
        started: tuple[int, int] | None,
        performed: dict[tuple[int, int], dict[str, Any] | Exception],
    ) -> bool:
        saga = work.saga
        compensation = definition.compensation
        if compensation is None:
            saga.finish_compensation(step.order)
            return True
        # Compensations reach the outside world: like actions, they run in the delivery
        # of their own CompensationStarted (its key has retry count -1).
        key = (step.order, -1)
        if started != key:
            return False
        step_input = self._input(saga, step)
        timeout = definition.timeout_for(saga.context)
        outcome = self._perform(f"compensation of {step.name}", compensation, step_input, timeout, performed, key)
        if isinstance(outcome, Exception):
            saga.fail_compensation(step.order, str(outcome) or type(outcome).__name__)
            return True
        work.add(compensation.record(step_input, outcome))
        saga.finish_compensation(step.order)
        return True


def _no_change() -> tuple[None, Sequence[HodeiAggregate]]:
    return None, ()


def _log_unexpected(name: str, exc: Exception) -> None:
    if not isinstance(exc, HodeiError):
        log.error("step %s raised %s", name, exc, exc_info=exc)


__all__ = [
    "Effect",
    "RetryPolicy",
    "SagaDefinition",
    "SagaEngine",
    "StepDefinition",
    "StepInput",
    "StepKind",
    "StepResult",
]
