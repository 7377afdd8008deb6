"""Which events drive which sagas: the outbox relay's routing table.

JobCreated                  -> start PROVISIONING (attempt 1)
JobProviderSelected (of a job that joined the queue: not one admitted at once, whose
saga went on in that transaction), WorkerTerminated, a job's requeue, or its end (unless
its worker is still there: it holds the slot until its WorkerTerminated)
                            -> admit queued jobs of that provider (hodei.admission)
JobAssigned                 -> its worker registered: admit, where the provider's starts
                               are limited
JobReleased                 -> admit queued jobs of its provider (it is back in its line)
SagaCompleted (provisioning)-> nothing: the transaction that completed it started EXECUTION
                               (SagaDefinition.then; its payload's `then` says so). A
                               SagaCompleted without `then` was written by an older server,
                               which left the start to this delivery: start it now.
WorkerFailed (running job)  -> start RECOVERY
JobStatusChanged to PENDING -> start PROVISIONING for the next attempt (a requeue)
saga events that need a move (an older server's SagaStarted — one without
`moves_at_once` —, StepStarted of an ACTION step, or of a WAIT without `unmissed`,
StepFailed, CompensationStarted)
                            -> advance that saga (an older server's WAIT StepStarted
                               re-checks it after commit: an event that satisfied it
                               while the step was being started is not missed; an
                               `unmissed` one committed only if no such event came)
job and worker events       -> poke the job's waiting sagas: JobAdmitted, WorkerRegistered,
                               JobStatusChanged, WorkerTerminated, WorkerFailed. Not
                               JobAccepted: the JobStatusChanged to RUNNING saved with it
                               is the next row of the job and pokes; nor
                               JobProviderSelected: its saga tried the wait for a slot in
                               that transaction, and a later admission is a JobAdmitted.

A row whose routing event (its last) has no route here, or one its route does not want
(``Route.wants``: a JobProviderSelected that admitted its job, a JobAssigned of a
provider without a start limit, a LOCAL or unmissed WAIT StepStarted, a SagaStarted
that moved at once, a SagaCompleted with `then`), is
written delivered: about half a job's rows, which relays used to claim only to
acknowledge. So is a worker's report's WorkerRegistered or JobStatusChanged that would
only poke (``only_pokes``): the report made that poke in its own commit.
"""

from __future__ import annotations

from uuid import UUID

from hodei.admission import Admission
from hodei.domain.job import Job, JobState
from hodei.domain.provider import ProviderType
from hodei.domain.saga import Saga, SagaType
from hodei.domain.worker import Worker, WorkerState
from hodei.relay import Delivery, Route
from hodei.sagas.engine import SagaEngine
from hodei.store.app import HodeiStore
from hodei.store.events import EventRecord


def _job_id(delivery: Delivery) -> str:
    """Every job-related write carries the job id as correlation id."""
    event = delivery.event
    return event.aggregate_id if event.aggregate_type == "Job" else str(event.correlation_id)


def _worker_holds_the_slot(store: HodeiStore, job: Job) -> bool:
    """A job that ended while its worker is there: the slot is the worker's until it is
    terminated, and that delivery admits (an admission now would find none free)."""
    if not job.is_terminal or job.worker_id is None:
        return False
    worker = store.find(Worker, job.worker_id)
    return worker is not None and worker.state is not WorkerState.TERMINATED


def only_pokes(event: EventRecord) -> bool:
    """Whether the delivery of a worker's report would only poke the job's sagas: its
    registration, or (``job_status_changed`` below) a change to RUNNING, or to an end
    while the worker holds the job's slot (it does until WorkerTerminated, whose delivery
    admits; a report that changes its job after that, which a stream hardly ever sees,
    leaves the slot to the next sweep's round). A requeue (PENDING) is not: it starts the
    next attempt and moves the queue. The report makes that poke in its own commit
    (``SagaEngine.change_job``) and writes such a row delivered."""
    if event.event_type == "WorkerRegistered":
        return True
    return event.event_type == "JobStatusChanged" and event.payload.get("new_state") != JobState.PENDING


def build(engine: SagaEngine, store: HodeiStore, admission: Admission) -> dict[str, Route]:
    def job_created(delivery: Delivery) -> None:
        engine.start(SagaType.PROVISIONING, delivery.event.aggregate_id, 1, {}, delivery.ack)

    def provider_selected(delivery: Delivery) -> None:
        # No poke: the saga tried its wait for a slot where it selected the provider, and
        # the job's admission, here or by anyone later, is a JobAdmitted that pokes.
        admission.admit(ProviderType(delivery.event.payload["provider_type"]), delivery.ack, joined=True)

    def job_status_changed(delivery: Delivery) -> None:
        job_id = delivery.event.aggregate_id
        new_state = JobState(delivery.event.payload["new_state"])
        if new_state is JobState.PENDING or new_state.is_terminal:
            job = store.load(Job, job_id)
            if new_state is JobState.PENDING:
                engine.start(SagaType.PROVISIONING, job_id, job.attempt, {}, None)
            if job.provider_type is not None and not _worker_holds_the_slot(store, job):
                admission.admit(ProviderType(job.provider_type))  # the queue moves: a slot, or a place
        engine.poke(job_id, delivery.ack)

    def job_released(delivery: Delivery) -> None:
        job = store.load(Job, delivery.event.aggregate_id)
        if job.provider_type is not None:  # back in its line: a round may admit it now
            admission.admit(ProviderType(job.provider_type), delivery.ack)

    def worker_terminated(delivery: Delivery) -> None:
        worker = store.load(Worker, delivery.event.aggregate_id)
        admission.admit(ProviderType(worker.provider_type))  # its slot is free
        engine.poke(worker.job_id, delivery.ack)

    def poke(delivery: Delivery) -> None:
        engine.poke(_job_id(delivery), delivery.ack)

    def job_assigned(delivery: Delivery) -> None:
        # Its worker registered (the EXECUTION saga assigns at once): a start is free.
        admission.started(ProviderType(delivery.event.payload["provider_type"]))

    def worker_failed(delivery: Delivery) -> None:
        worker = store.load(Worker, delivery.event.aggregate_id)
        job = store.load(Job, worker.job_id)
        if job.state is JobState.RUNNING and job.worker_id == str(worker.id) and job.attempt == worker.attempt:
            engine.start(SagaType.RECOVERY, worker.job_id, worker.attempt, {"worker_id": str(worker.id)}, None)
        engine.poke(worker.job_id, delivery.ack)

    def needs_a_move(event: EventRecord) -> bool:
        if event.event_type == "SagaStarted":
            return not event.payload.get("moves_at_once")  # an older server's, which left that to us
        if event.event_type == "StepStarted":
            # Not a LOCAL step: it ran (and was recorded) with its StepStarted; nor a WAIT
            # that no earlier event can have missed: the events after it poke it.
            return not engine.runs_inline(event.payload["step_name"]) and not event.payload.get("unmissed")
        return True

    def advance(delivery: Delivery) -> None:
        event = delivery.event
        started = None
        if event.event_type == "StepStarted":
            started = (event.payload["step_order"], event.payload["retry_count"])
        elif event.event_type == "CompensationStarted":
            started = (event.payload["step_order"], -1)
        engine.advance(UUID(event.aggregate_id), _job_id(delivery), delivery.ack, started)

    def saga_completed(delivery: Delivery) -> None:
        engine.follow(store.load(Saga, delivery.event.aggregate_id), delivery.ack)

    def abandon(delivery: Delivery, error: str) -> None:
        engine.abort(UUID(delivery.event.aggregate_id), _job_id(delivery), f"delivery failed for good: {error}")

    saga_route = Route(advance, dead_letter=abandon, wants=needs_a_move)
    limited = {provider.value for provider in admission.start_limits}
    poke_route = Route(poke)
    return {
        "JobCreated": Route(job_created),
        "JobProviderSelected": Route(provider_selected, wants=lambda event: not event.payload.get("admitted")),
        "JobAdmitted": poke_route,
        "JobReleased": Route(job_released),
        "JobAssigned": Route(job_assigned, wants=lambda event: event.payload.get("provider_type") in limited),
        "JobStatusChanged": Route(job_status_changed),
        "WorkerRegistered": poke_route,
        "WorkerTerminated": Route(worker_terminated),
        "WorkerFailed": Route(worker_failed),
        "SagaStarted": saga_route,
        "StepStarted": saga_route,
        "StepFailed": saga_route,
        "CompensationStarted": saga_route,
        # Without `then`: an older server's, which left the next saga's start to us.
        "SagaCompleted": Route(saga_completed, wants=lambda event: "then" not in event.payload),
    }
