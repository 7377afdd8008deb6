"""EXECUTION: assign the job to its worker, hand it over, wait for acceptance and for
the result, store the logs, release and destroy the worker."""

from __future__ import annotations

from functools import partial
from typing import Any

from hodei.domain.base import HodeiAggregate
from hodei.domain.job import Job, JobState
from hodei.domain.saga import SagaType
from hodei.errors import ProviderError
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

# Time past the job's own timeout (plus the kill grace) before the server gives up on
# hearing a result and enforces the timeout itself.
RESULT_MARGIN = 15.0
# More for a job with artifacts, and again for one that fetches others': its worker
# uploads them after the command, before its result, and fetches those (and its --input
# files) before it (the agent gives each at most hodei_worker.artifacts.TRANSFER_SECONDS).
ARTIFACTS_MARGIN = 300.0
ACCEPTANCE_TIMEOUT = 30.0


def _left_attempt(job: Job, step: StepInput) -> bool:
    """The job ended, or was requeued to a later attempt by a recovery."""
    return job.is_terminal or job.attempt != step.attempt


def persist_logs_of(deps: SagaDeps, job: Job) -> list[Job]:
    if not job.is_terminal or job.log_uri is not None:
        return []
    deps.logs.ensure(str(job.id))
    size_bytes, entries = deps.logs.stats(str(job.id))
    job.record_logs(deps.logs.uri(str(job.id)), size_bytes, entries)
    return [job]


def assign_worker(deps: SagaDeps, step: StepInput) -> StepResult:
    job = deps.job(step.job_id)
    job.assign(step.context["worker_id"], step.context["provider_id"], step.context["provider_type"])
    fetches = job.spec.fetch_artifacts or bool(job.spec.input_sha256)  # one time for both (TRANSFER_SECONDS)
    margin = RESULT_MARGIN + ARTIFACTS_MARGIN * (bool(job.spec.artifacts) + fetches)
    return StepResult({"job_timeout": job.spec.timeout_seconds, "result_margin": margin}, (job,))


def release_after_failure(deps: SagaDeps, step: StepInput) -> dict[str, Any]:
    return deps.destroy(deps.worker(step.context["worker_id"]))


def end_job_after_failure(deps: SagaDeps, step: StepInput, outcome: dict[str, Any]) -> list[HodeiAggregate]:
    worker_id = step.context["worker_id"]
    changed: list[HodeiAggregate] = [*terminate(deps, worker_id, f"execution failed: {step.failure}", outcome)]
    job = deps.job(step.job_id)
    if job.attempt != step.attempt:
        return changed
    if not job.is_terminal:
        if step.failed_step == "wait_for_result" and job.state is JobState.RUNNING:
            job.time_out(f"no result within the job's timeout: {step.failure}", deps.clock())
        else:
            job.fail(f"execution failed: {step.failure}")
    changed.extend(persist_logs_of(deps, job))
    return changed


def dispatch_job(deps: SagaDeps, step: StepInput) -> StepResult:
    worker = deps.worker(step.context["worker_id"])
    worker.dispatch(step.job_id)
    return StepResult(changed=(worker,))


def wait_for_acceptance(deps: SagaDeps, step: StepInput) -> StepResult | None:
    job = deps.job(step.job_id)
    if job.state is JobState.RUNNING or _left_attempt(job, step):
        return StepResult()
    worker = deps.worker(step.context["worker_id"])
    if not worker.is_live:
        raise ProviderError(f"worker {worker.id} was lost before accepting the job: {worker.reason}")
    return None


def wait_for_result(deps: SagaDeps, step: StepInput) -> StepResult | None:
    """Met once the job ends; a cancelled one's worker is kept while its processes stop
    (until it reports them stopped or is lost), so they get their grace and what they
    print while stopping is in the stored log. The worker SIGKILLs them at the end of
    the grace and reports; one that never does is lost by its heartbeat, or this wait
    fails at its deadline and the compensation destroys it. Even with no grace
    (``--force``) the report is waited for: releasing the worker at once let the
    provider's own stop SIGTERM the job before the worker's SIGKILL."""
    job = deps.job(step.job_id)
    if not _left_attempt(job, step):
        return None
    if job.attempt == step.attempt and job.stop_pending and deps.worker(step.context["worker_id"]).is_live:
        return None
    return StepResult()


def persist_logs(deps: SagaDeps, step: StepInput) -> StepResult:
    job = deps.job(step.job_id)
    if job.attempt != step.attempt:
        return StepResult()
    return StepResult(changed=tuple(persist_logs_of(deps, job)))


def record_released(deps: SagaDeps, step: StepInput, outcome: dict[str, Any]) -> list[HodeiAggregate]:
    return list(terminate(deps, step.context["worker_id"], "job finished", outcome))


def build(deps: SagaDeps) -> SagaDefinition:
    return SagaDefinition(
        SagaType.EXECUTION,
        (
            StepDefinition(
                "assign_worker",
                StepKind.LOCAL,
                run=partial(assign_worker, deps),
                compensation=Effect(partial(release_after_failure, deps), partial(end_job_after_failure, deps)),
                compensate_when_failed=True,
            ),
            StepDefinition("dispatch_job", StepKind.LOCAL, run=partial(dispatch_job, deps)),
            StepDefinition(
                "wait_for_acceptance", StepKind.WAIT, run=partial(wait_for_acceptance, deps), timeout=ACCEPTANCE_TIMEOUT
            ),
            StepDefinition(
                "wait_for_result",
                StepKind.WAIT,
                run=partial(wait_for_result, deps),
                timeout=lambda context: (
                    float(context["job_timeout"]) + deps.timing.kill_grace + context.get("result_margin", RESULT_MARGIN)
                ),
            ),
            StepDefinition("persist_logs", StepKind.LOCAL, run=partial(persist_logs, deps)),
            StepDefinition(
                "release_worker",
                StepKind.ACTION,
                effect=Effect(partial(release_after_failure, deps), partial(record_released, deps)),
                timeout=60.0,
                retry=RetryPolicy(max_retries=3),
            ),
        ),
    )
