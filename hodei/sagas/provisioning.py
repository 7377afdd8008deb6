"""PROVISIONING: choose a provider, wait in its queue for a slot (admission control),
register the worker and its single-use token, create the worker through the provider,
wait until it registers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from hodei.domain.job import Job
from hodei.domain.provider import PROVIDER_IDS, ProviderType
from hodei.domain.saga import SagaType
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker, WorkerState
from hodei.errors import HodeiError, InvalidTransition, ProviderError
from hodei.providers.base import WorkerLaunch
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
from hodei.tokens import new_nonce

log = logging.getLogger(__name__)

# What a start failure quotes of the worker's own output.
OUTPUT_LINES = 20
OUTPUT_CHARS = 2000
# Seconds a worker's container or pod has to be made, beside an image's pull (pull_time).
CREATE_WORKER_TIMEOUT = 90.0


def agent_environment(deps: SagaDeps, worker: Worker, kill_grace: float) -> dict[str, str]:
    """The worker agent's whole configuration (see workers/hodei_worker/agent.py)."""
    return {
        **deps.dial(),
        "HODEI_SERVER_ADDRESS": ",".join(deps.worker_addresses()),
        "HODEI_WORKER_ID": str(worker.id),
        "HODEI_JOB_ID": worker.job_id,
        "HODEI_WORKER_TOKEN": deps.signer.registration_token(str(worker.id), worker.job_id, worker.token_nonce),
        "HODEI_KILL_GRACE": f"{kill_grace:g}",
        "HODEI_WORKER_ORPHAN_TIMEOUT": f"{deps.timing.orphan_timeout:g}",
    }


def start_failure(deps: SagaDeps, step: StepInput, what: str) -> str:
    """Why a worker never registered, as far as the platform can tell: ``what`` happened,
    where it was told to dial, and the last lines it printed."""
    worker = deps.worker(step.context["worker_id"])
    dialled = ",".join(deps.worker_addresses())
    try:
        tail = deps.providers.get(ProviderType(worker.provider_type)).output_tail(str(worker.id), OUTPUT_LINES)
    except HodeiError as exc:
        tail = f"(its output could not be read: {exc})"
    shown = tail.rstrip()[-OUTPUT_CHARS:] or "(nothing)"
    return f"{what}; it was told to dial {dialled} (HODEI_SERVER_HOST); its last output: {shown}"


def select_provider(deps: SagaDeps, step: StepInput) -> StepResult:
    job = deps.job(step.job_id)
    if job.is_terminal:
        raise InvalidTransition(f"job {job.id} already ended {job.state}")
    provider_type = deps.providers.select(job.spec)
    provider_id = str(PROVIDER_IDS[provider_type])
    # Taken at once, the slot lets wait_for_slot (tried next, in this transaction) pass.
    job.select_provider(
        provider_id, provider_type.value, deps.admission.admits_at_once(job, provider_type, deps.clock())
    )
    output = {
        "provider_id": provider_id,
        "provider_type": provider_type.value,
        "queue_timeout": _queue_timeout(job.spec, deps.clock()),
        "image_pull_timeout": deps.timing.image_pull_timeout if job.spec.image else 0.0,
    }
    return StepResult(output, (job,))


def pull_time(context: Mapping[str, Any], pulled_by: ProviderType) -> float:
    """What the step in which ``pulled_by`` pulls a job's image of its own adds to its
    timeout (HODEI_IMAGE_PULL_TIMEOUT): Docker pulls it as it creates the container, the
    kubelet once the pod exists, while the worker has not registered. A saga begun before
    the setting has none."""
    if context.get("provider_type") != pulled_by.value:
        return 0.0
    return float(context.get("image_pull_timeout") or 0.0)


def _queue_timeout(spec: JobSpec, now: datetime) -> float:
    """Seconds the job may wait in the queue from now (0: no limit): a job that begins
    later (--begin) has its queue timeout counted from then."""
    begins = spec.begins
    if not spec.queue_timeout_seconds or begins is None:
        return spec.queue_timeout_seconds
    return spec.queue_timeout_seconds + max(0.0, (begins - now).total_seconds())


def wait_for_slot(deps: SagaDeps, step: StepInput) -> StepResult | None:
    """Waits in the provider's queue until the job is admitted (hodei.admission)."""
    job = deps.job(step.job_id)
    if job.is_terminal:
        raise InvalidTransition(f"job {job.id} ended {job.state} while it waited in the queue")
    if job.attempt != step.attempt or job.admitted:
        return StepResult()
    return None


def fail_job(deps: SagaDeps, step: StepInput, _: dict[str, Any]) -> list[Job]:
    job = deps.job(step.job_id)
    if job.is_terminal or job.attempt != step.attempt:
        return []
    job.fail(f"provisioning failed: {step.failure}")
    return [job]


def register_worker(deps: SagaDeps, step: StepInput) -> StepResult:
    worker_id = Worker.create_id(step.job_id, step.attempt)
    if deps.store.find(Worker, worker_id) is not None:
        return StepResult({"worker_id": str(worker_id)})
    worker = Worker(
        job_id=step.job_id,
        attempt=step.attempt,
        provider_id=step.context["provider_id"],
        provider_type=step.context["provider_type"],
        token_nonce=new_nonce(),
        token_expires_at=(deps.clock() + timedelta(seconds=deps.timing.token_ttl)).isoformat(),
    )
    return StepResult({"worker_id": str(worker.id)}, (worker,))


def destroy_worker(deps: SagaDeps, step: StepInput) -> dict[str, Any]:
    worker = deps.worker(step.context["worker_id"])
    keep = deps.timing.keep_failed_workers
    if keep > 0 and deps.providers.get(ProviderType(worker.provider_type)).inspectable:
        # The reconciler removes it once the keep time has passed.
        log.warning("keeping worker %s of job %s for %gs for inspection", worker.id, worker.job_id, keep)
        deps.forget_worker(worker.id)
        return {}
    return deps.destroy(worker)


def record_destroyed(deps: SagaDeps, step: StepInput, outcome: dict[str, Any]) -> list[Worker]:
    return terminate(deps, step.context["worker_id"], f"provisioning failed: {step.failure}", outcome)


def create_worker(deps: SagaDeps, step: StepInput) -> dict[str, Any]:
    worker = deps.worker(step.context["worker_id"])
    job = deps.job(step.job_id)
    provider = deps.providers.get(ProviderType(worker.provider_type))
    resource_id = provider.create_worker(
        WorkerLaunch(
            worker_id=str(worker.id),
            job_id=step.job_id,
            env=agent_environment(deps, worker, deps.timing.kill_grace),
            cpu_cores=job.spec.resources.cpu_cores,
            memory_bytes=job.spec.resources.memory_bytes,
            disk_bytes=job.spec.resources.disk_bytes,
            timeout_seconds=job.spec.timeout_seconds,
            labels=job.spec.labels,
            image=job.spec.image,
            image_pull=job.spec.image_pull,
            node_selector=job.spec.node_selector,
            tolerations=job.spec.tolerations,
            service_account=job.spec.service_account,
        )
    )
    return {"resource_id": resource_id}


def record_resource(deps: SagaDeps, step: StepInput, output: dict[str, Any]) -> list[Worker]:
    worker = deps.worker(step.context["worker_id"])
    worker.record_resource(output["resource_id"])
    return [worker]


def wait_for_registration(deps: SagaDeps, step: StepInput) -> StepResult | None:
    worker = deps.worker(step.context["worker_id"])
    if worker.state in (WorkerState.READY, WorkerState.BUSY):
        return StepResult()
    if not worker.is_live:
        raise ProviderError(start_failure(deps, step, f"worker {worker.id} failed before registering: {worker.reason}"))
    job = deps.job(step.job_id)
    if job.is_terminal:
        raise InvalidTransition(f"job {job.id} ended {job.state} while its worker was starting")
    return None


def _registration_time(deps: SagaDeps, context: Mapping[str, Any]) -> float:
    """wait_for_registration's timeout: the kubelet pulls a job's own image meanwhile."""
    return deps.timing.registration_timeout + pull_time(context, ProviderType.KUBERNETES)


def _not_registered(deps: SagaDeps, step: StepInput) -> str:
    pulling = pull_time(step.context, ProviderType.KUBERNETES)
    settings = "HODEI_REGISTRATION_TIMEOUT" + (" + HODEI_IMAGE_PULL_TIMEOUT: its image's pull" if pulling else "")
    return f"the worker did not register within {_registration_time(deps, step.context):g}s ({settings})"


def build(deps: SagaDeps) -> SagaDefinition:
    return SagaDefinition(
        SagaType.PROVISIONING,
        (
            StepDefinition(
                "select_provider",
                StepKind.LOCAL,
                run=partial(select_provider, deps),
                compensation=Effect(lambda _: {}, partial(fail_job, deps)),
                compensate_when_failed=True,
            ),
            StepDefinition(
                "wait_for_slot",
                StepKind.WAIT,
                run=partial(wait_for_slot, deps),
                timeout=lambda context: float(context.get("queue_timeout") or "inf"),
                expired="waited in the queue past its queue timeout: deadline",
            ),
            StepDefinition(
                "register_worker",
                StepKind.LOCAL,
                run=partial(register_worker, deps),
                compensation=Effect(partial(destroy_worker, deps), partial(record_destroyed, deps)),
            ),
            StepDefinition(
                "create_worker",
                StepKind.ACTION,
                effect=Effect(partial(create_worker, deps), partial(record_resource, deps)),
                timeout=lambda context: CREATE_WORKER_TIMEOUT + pull_time(context, ProviderType.DOCKER),
                retry=RetryPolicy(max_retries=2),
            ),
            StepDefinition(
                "wait_for_registration",
                StepKind.WAIT,
                run=partial(wait_for_registration, deps),
                timeout=partial(_registration_time, deps),
                expired=lambda step: start_failure(deps, step, _not_registered(deps, step)) + "; deadline",
            ),
        ),
        then=SagaType.EXECUTION,
    )
