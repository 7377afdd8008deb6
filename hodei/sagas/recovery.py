"""RECOVERY: a running job's worker was lost. Confirm it with the provider, destroy what
is left of the worker, then fail the job or requeue it (per its max attempts). The
destruction comes first: a new attempt never starts while the old one's processes,
container or pod may still run."""

from __future__ import annotations

from functools import partial
from typing import Any

from hodei.domain.job import Job
from hodei.domain.provider import ProviderType
from hodei.domain.saga import SagaType
from hodei.sagas.deps import SagaDeps, terminate
from hodei.sagas.engine import (
    Effect,
    RetryPolicy,
    SagaDefinition,
    StepDefinition,
    StepInput,
    StepKind,
    StepResult,
)


def confirm_worker_lost(deps: SagaDeps, step: StepInput) -> dict[str, Any]:
    worker = deps.worker(step.context["worker_id"])
    provider = deps.providers.get(ProviderType(worker.provider_type))
    seen = next((o for o in provider.observe() if o.worker_id == str(worker.id)), None)
    if seen is None:
        evidence = "its resource is gone"
    elif seen.failure:
        evidence = seen.failure
    else:
        evidence = "its resource still runs but it stopped reporting"
    return {"evidence": evidence, "lost_reason": worker.reason or "lost"}


def fail_or_requeue(deps: SagaDeps, step: StepInput) -> StepResult:
    job = deps.store.load(Job, step.job_id)
    if job.is_terminal or job.attempt != step.attempt:
        return StepResult()
    context = step.context
    # A loss seen by the provider has its observation as reason and as evidence: say it once.
    said = dict.fromkeys((context["lost_reason"], context["evidence"]))
    reason = f"worker {context['worker_id']} was lost ({'; '.join(said)})"
    if job.can_retry:
        job.requeue(reason)
        decision = "requeued"
    else:
        job.fail(reason)
        decision = "failed"
    return StepResult({"decision": decision}, (job,))


def destroy_worker(deps: SagaDeps, step: StepInput) -> dict[str, Any]:
    return deps.destroy(deps.worker(step.context["worker_id"]))


def record_destroyed(deps: SagaDeps, step: StepInput, outcome: dict[str, Any]) -> list[Any]:
    return terminate(deps, step.context["worker_id"], "worker lost", outcome)


def build(deps: SagaDeps) -> SagaDefinition:
    return SagaDefinition(
        SagaType.RECOVERY,
        (
            StepDefinition(
                "confirm_worker_lost",
                StepKind.ACTION,
                effect=Effect(partial(confirm_worker_lost, deps)),
                timeout=30.0,
                retry=RetryPolicy(max_retries=2),
            ),
            StepDefinition(
                "destroy_worker",
                StepKind.ACTION,
                effect=Effect(partial(destroy_worker, deps), partial(record_destroyed, deps)),
                timeout=60.0,
                retry=RetryPolicy(max_retries=3),
            ),
            StepDefinition("fail_or_requeue_job", StepKind.LOCAL, run=partial(fail_or_requeue, deps)),
        ),
    )
