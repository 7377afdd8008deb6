"""hodei.jobs.JobExecutionService: submit, inspect, watch and cancel jobs."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol
from uuid import UUID

import grpc

from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.clock import DatabaseClock
from hodei.config import KubernetesConfig
from hodei.domain.base import check_submitter_name, uuid_or_none
from hodei.domain.execs import ANSWER_WITHIN, check_exec
from hodei.domain.job import Job, JobState, after_met, check_signal
from hodei.domain.placement import check_service_account, merged_selector
from hodei.domain.provider import ProviderType
from hodei.domain.spec import (
    AFTER_CONDITIONS,
    ARRAY_LABEL,
    LIMITS,
    PARENT_LABEL,
    JobBounds,
    JobSpec,
    LabelSelector,
    Resources,
    array_element,
    check_priority,
    naming_arrays,
    never_after,
    written_secrets,
)
from hodei.domain.workflow import MOST_JOBS, WORKFLOW_LABEL, in_workflow, resolved
from hodei.errors import InvalidInput, InvalidTransition, NoAnswer, NotFound, PermissionDenied
from hodei.execs import ExecResults
from hodei.faults import Faults
from hodei.inputs import InputStore
from hodei.limits import Limits
from hodei.pools import Pools
from hodei.providers.registry import check_provider, never_room, provider_type_of
from hodei.providers.sim import Simulation
from hodei.roles import Caller, Role
from hodei.server.access import caller
from hodei.server.convert import exec_to_proto, job_to_proto, saga_to_proto, timestamp, worker_to_proto
from hodei.server.edge import STREAMS, rpc
from hodei.server.submission import Submission, earlier, first_answer, repeated_ids
from hodei.server.webhooks_api import delivery_to_proto
from hodei.server.workflows import workflow_of
from hodei.signals import AsyncWaiter, Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_transaction, fetch_all, fetch_column, fetch_one
from hodei.store.history import history
from hodei.store.job_secrets import JobSecrets, SecretsPurged
from hodei.store.readmodels import JobFilters, JobRow, ReadModels
from hodei.webhooks import Webhooks
from hodei.wire import MAX_JOBS_LISTED, not_succeeded, spec_from_proto

DEFAULT_LIMIT = 20
# The most jobs one GetJobsUsage names (`job top` asks for those it lists, a page at a time).
MOST_USAGE_JOBS = 500
# What `job update` changes of a waiting job's limits (UpdateJobRequest's fields).
_LIMITS: tuple[Literal["timeout_seconds", "cpu_cores", "memory_bytes", "disk_bytes"], ...] = (
    "timeout_seconds",
    "cpu_cores",
    "memory_bytes",
    "disk_bytes",
)
# A backstop: a watcher is woken by the NOTIFY of every change of its job.
WATCH_POLL = 5.0
# How long a command's end is waited for once its job has ended (its worker ends it and
# says so, as it ends the job's).
EXEC_AFTER_JOB = 5.0


def cancel_grace(request: jobs_pb2.CancelJobRequest, default: float) -> float:
    """The seconds between SIGTERM and SIGKILL a cancel asks for (``default`` when unset)."""
    if not request.HasField("grace_seconds"):
        return default
    grace = request.grace_seconds
    if not math.isfinite(grace) or not 0 <= grace <= LIMITS.max_timeout_seconds:
        raise InvalidInput(f"the grace must be 0 to {LIMITS.max_timeout_seconds:g} seconds, got {grace:.15g}")
    return grace


class Selection(Protocol):
    """The job list's filters, as a request carries them (ListJobs, ReportJobs)."""

    @property
    def provider(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def label_selector(self) -> Sequence[str]: ...
    @property
    def submitter(self) -> str: ...
    @property
    def mine(self) -> bool: ...


def job_filters(request: Selection, labels: Mapping[str, str] | None = None) -> JobFilters:
    """A request's filters, checked: an unknown provider, a submitter's name that no
    token could have, or both a submitter and the caller's own are refused. ``labels``:
    pairs already split (ListJobs' map), beside the selector's terms."""
    provider = provider_type_of(request.provider)  # k8s, an id...; unknown ones are refused
    if request.mine and request.submitter:
        raise InvalidInput("give either a submitter or mine (the caller's own jobs), not both")
    submitter = caller().name if request.mine else request.submitter.strip() or None
    if submitter is not None:
        check_submitter_name(submitter)
    return JobFilters(
        provider=provider.value if provider else None,
        name=request.name.strip() or None,
        labels=LabelSelector.of(request.label_selector, labels),
        submitter=submitter,
    )


def refuse_unrunnable(spec: JobSpec, pools: Pools, kubernetes: KubernetesConfig, reads: ReadModels) -> None:
    """An unknown provider is refused before anything is written; so are a sim job's
    settings (HODEI_SIM_SECONDS, …), which would otherwise fail it later, a pool that
    does not exist, whose jobs would wait for ever, an image on a provider that cannot
    run one, nodes chosen on a provider without nodes, a node selector that the
    server's (HODEI_K8S_NODE_SELECTOR) contradicts, a service account the server does not
    let jobs name (HODEI_K8S_JOB_SERVICE_ACCOUNTS), and more CPU or memory than the
    provider named has for its jobs (``provider capacity --cpus``)."""
    provider = check_provider(spec)
    if provider is ProviderType.SIM:
        Simulation.of(spec.env)
    asks = spec.resources.cpu_cores or spec.resources.memory_bytes  # one asking for none always fits
    recorded = reads.provider(provider) if provider is not None and asks else None
    if provider is not None and recorded is not None and (never := never_room(provider, recorded, spec)):
        raise InvalidInput(never)
    pools.check(spec.pool)
    merged_selector(kubernetes.node_selector, spec.node_selector)
    check_service_account(spec.service_account, kubernetes.job_service_accounts)


class JobExecutionService(jobs_pb2_grpc.JobExecutionServiceServicer):
    def __init__(
        self,
        store: HodeiStore,
        reads: ReadModels,
        signals: Signals,
        secrets: JobSecrets,
        pools: Pools,
        limits: Limits,
        kill_grace: float,
        faults: Faults,
        clock: DatabaseClock,
        webhooks: Webhooks,
        inputs: InputStore,
        exec_results: ExecResults,
        bounds: JobBounds,
        kubernetes: KubernetesConfig,
    ) -> None:
        self.store = store
        self.reads = reads
        self.signals = signals
        self.secrets = secrets
        self.pools = pools
        self.limits = limits
        # A cancel's grace when it names none (HODEI_KILL_GRACE).
        self.kill_grace = kill_grace
        self.faults = faults
        # Deadlines' time: a cancel's grace is judged by the server its worker is connected to.
        self.clock = clock
        # What a job asking for none is given, and the most one may ask for (HODEI_DEFAULT_CPUS,
        # HODEI_MAX_MEMORY_BYTES, HODEI_MAX_DISK_BYTES, …), for each job made.
        self.bounds = bounds
        # HODEI_K8S_NODE_SELECTOR, which a job's own selector may not contradict, and the
        # service accounts a job may name (HODEI_K8S_JOB_SERVICE_ACCOUNTS).
        self.kubernetes = kubernetes
        self.webhooks = webhooks
        # Files jobs start with (--input): each job made is given its copy.
        self.inputs = inputs
        self.exec_results = exec_results

    @rpc
    def QueueJob(self, request: jobs_pb2.QueueJobRequest, context: grpc.ServicerContext) -> jobs_pb2.QueueJobResponse:
        who = caller().name
        submission = Submission.of(request, who)
        secrets = dict(request.secrets)
        if not request.validate_only and (repeat := self._repeat(submission, secrets, bool(request.array))):
            return repeat
        spec, _ = self._checked(request, secrets)
        jobs = [
            self._held(
                request,
                who,
                Job.submit(job_spec, job_id, self.secrets.seal(job_id, secrets), request_digest=submission.digest),
            )
            for job_id, job_spec in _planned(spec, list(request.array), submission.ids)
        ]
        first = str(jobs[0].id)
        if request.validate_only:
            with command_transaction(self.store.pool):  # writes nothing
                self.limits.make_room(who, len(jobs))
            return jobs_pb2.QueueJobResponse()
        if spec.input_sha256:
            self.inputs.attach(spec.input_sha256, spec.input_bytes, (str(job.id) for job in jobs), who)

        def write() -> jobs_pb2.QueueJobResponse:
            # Every job of an array, or none: one write (each job's events correlated with
            # the job itself, as a job submitted alone).
            with command_transaction(self.store.pool):
                self.limits.make_room(who, len(jobs))
                self.store.write(jobs, Meta(actor=who, correlation_id=None if request.array else first))
            self.faults.point("submit-committed")
            array_job_ids = [str(job.id) for job in jobs] if request.array else []
            return jobs_pb2.QueueJobResponse(job_id=first, array_job_ids=array_job_ids)

        return first_answer(write, lambda: self._repeat(submission, secrets, bool(request.array)))

    @rpc
    def QueueJobs(
        self, request: jobs_pb2.QueueJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.QueueJobsResponse:
        """Several jobs, all or none (``hodei.domain.workflow``): each checked as QueueJob
        checks one, written in one transaction."""
        who = caller().name
        if not 1 <= len(request.jobs) <= MOST_JOBS:
            raise InvalidInput(f"give 1 to {MOST_JOBS} jobs to submit together, got {len(request.jobs)}")
        for place, part in enumerate(request.jobs, 1):
            if part.array or part.idempotency_key or part.validate_only:
                raise InvalidInput(
                    f"job {place} of the request: a job submitted with others is one job (no array), and the "
                    "idempotency key and validate_only are the whole request's"
                )
        submission = Submission.of_several(request, who)
        values = [dict(part.secrets) for part in request.jobs]
        if not request.validate_only and (repeat := self._repeat_several(submission, values)):
            return repeat
        ids, jobs = submission.ids, []
        for place, part in enumerate(request.jobs):
            secrets = dict(part.secrets)
            try:
                spec, siblings = self._checked(part, secrets, partial(resolved, place=place, ids=ids))
            except InvalidInput as exc:  # which one, of several
                raise InvalidInput(f"job {place + 1} of the request ({part.spec.name or 'no name'}): {exc}") from None
            spec = in_workflow(spec, ids[0], siblings)
            job = Job.submit(spec, ids[place], self.secrets.seal(ids[place], secrets), request_digest=submission.digest)
            jobs.append(self._held(part, who, job))
        if request.validate_only:
            with command_transaction(self.store.pool):  # writes nothing
                self.limits.make_room(who, len(jobs))
            return jobs_pb2.QueueJobsResponse()
        for job in jobs:
            if job.spec.input_sha256:
                self.inputs.attach(job.spec.input_sha256, job.spec.input_bytes, [str(job.id)], who)

        def write() -> jobs_pb2.QueueJobsResponse:
            with command_transaction(self.store.pool):
                self.limits.make_room(who, len(jobs))
                self.store.write(jobs, Meta(actor=who))  # each job's events correlated with itself
            self.faults.point("submit-committed")
            return jobs_pb2.QueueJobsResponse(job_ids=[str(job.id) for job in jobs])

        return first_answer(write, lambda: self._repeat_several(submission, values))

    @rpc
    def GetJobsUsage(
        self, request: jobs_pb2.GetJobsUsageRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.GetJobsUsageResponse:
        if len(request.job_ids) > MOST_USAGE_JOBS:
            raise InvalidInput(f"at most {MOST_USAGE_JOBS} jobs at once, got {len(request.job_ids)}")
        ids = [_job_uuid(job_id) for job_id in request.job_ids]
        return jobs_pb2.GetJobsUsageResponse(
            jobs=[usage_to_proto(row) for row in fetch_all(self.store.pool, "jobs_usage", (ids,), UsageRow)]
        )

    def _checked(
        self,
        request: jobs_pb2.QueueJobRequest,
        secrets: Mapping[str, str],
        siblings: Callable[[JobSpec], tuple[JobSpec, dict[str, str]]] = lambda spec: (spec, {}),
    ) -> tuple[JobSpec, dict[str, str]]:
        """The spec a request gives, checked as a submission (nothing written when refused),
        with the jobs it starts after by their whole ids; ``siblings``: those of its own
        submission of several jobs, apart (they have no job yet to be looked up)."""
        spec = self.bounds.apply(spec_from_proto(request.spec, secrets))
        naming_arrays(spec, request.after_arrays).validate(secrets)
        spec.refuse_written(secrets)
        refuse_unrunnable(spec, self.pools, self.kubernetes, self.reads)
        spec, own = siblings(spec)
        spec = self._after(spec, request.after_arrays)
        if spec.array_limit and not request.array:
            raise InvalidInput("an array's limit (--array …%N) is for the jobs of an array: give the array's indices")
        if request.hold_reason and not request.hold:
            raise InvalidInput("a hold's reason is for a job submitted held (hold)")
        return _submitted_from(spec, caller()), own

    @staticmethod
    def _held(request: jobs_pb2.QueueJobRequest, who: str, job: Job) -> Job:
        """The job, held when the request asks (``hold``)."""
        if request.hold:
            job.hold(who, _hold_reason(request.hold_reason))
        return job

    def _repeat_several(
        self, submission: Submission, values: list[dict[str, str]]
    ) -> jobs_pb2.QueueJobsResponse | None:
        if earlier(self.store, self.secrets, submission, values[0], values[1:]) is None:
            return None
        return jobs_pb2.QueueJobsResponse(job_ids=[str(job_id) for job_id in submission.ids], already_submitted=True)

    def _repeat(
        self, submission: Submission, secrets: Mapping[str, str] | None, array: bool
    ) -> jobs_pb2.QueueJobResponse | None:
        first = earlier(self.store, self.secrets, submission, secrets)
        if first is None:
            return None
        array_job_ids = [str(job_id) for job_id in submission.ids] if array else []
        return jobs_pb2.QueueJobResponse(job_id=str(first.id), array_job_ids=array_job_ids, already_submitted=True)

    def _after(self, spec: JobSpec, after_arrays: Mapping[str, str] | None = None) -> JobSpec:
        """The spec with the jobs it starts after named by their whole ids, an array's
        (``after_arrays``) each. Refused: one that does not exist, one named twice, and
        one that already ended otherwise than asked (the job would never start). One that
        ends so later is the sweeper's (it cancels the job)."""
        named = [(str(row.id), row.state, condition) for row, condition in self._named(spec.after)]
        for member, condition in self._named(after_arrays or {}):
            array_id = member.spec.get("labels", {}).get(ARRAY_LABEL)
            if array_id is None:
                raise InvalidInput(f"after-array: job {member.id} is not a job of an array (job run --array)")
            named.extend((job_id, state, condition) for job_id, state in self.reads.array_jobs(array_id))
        after: dict[str, str] = {}
        for job_id, state, condition in named:
            if condition in AFTER_CONDITIONS and after_met(condition, JobState(state)) is False:
                raise InvalidInput(f"after: {never_after(job_id, state, condition)}")
            if job_id in after:
                raise InvalidInput(f"after: job {job_id} is named twice")
            after[job_id] = condition
        return replace(spec, after=after) if named else spec

    def _named(self, refs: Mapping[str, str]) -> list[tuple[JobRow, str]]:
        """Each job named (an id or a prefix), with what is asked of it."""
        found = []
        for job_ref, condition in refs.items():
            try:
                found.append((self.reads.job(job_ref), condition))
            except NotFound as exc:
                raise InvalidInput(f"after: {exc.message}") from None
        return found

    @rpc
    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        row = self.reads.job(request.job_id)
        return jobs_pb2.GetJobResponse(job=job_to_proto(row, self.reads.phases(row.id)))

    @rpc
    def DescribeJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.JobDescription:
        row = self.reads.job(request.job_id)
        return jobs_pb2.JobDescription(
            job=job_to_proto(row, self.reads.phases(row.id)),
            sagas=[saga_to_proto(saga) for saga in self.reads.sagas_of_job(row.id)],
            workers=[worker_to_proto(worker) for worker in self.reads.workers_of_job(row.id)],
            webhook_messages=[delivery_to_proto(message) for message in self.webhooks.about_job(row.id)],
            execs=[exec_to_proto(entry) for entry in self.reads.execs_of_job(row.id)],
        )

    @rpc
    def GetWorkflow(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Workflow:
        return self._workflow(request.job_id)[0]

    def _workflow(self, job_ref: str) -> tuple[jobs_pb2.Workflow, dict[str, JobRow]]:
        """The pipeline of the job named, and its jobs' rows by id (those standing in it and
        those they copy)."""
        row = self.reads.job(job_ref)
        workflow_id = row.spec.get("labels", {}).get(WORKFLOW_LABEL)
        if workflow_id is None:
            raise InvalidInput(
                f"job {row.id} is not one of a pipeline (`job run --file` of several jobs, or a cron job's run of "
                "several)"
            )
        return workflow_of(self.reads, workflow_id)

    @rpc
    def GetJobHistory(
        self, request: jobs_pb2.GetJobHistoryRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.JobHistory:
        if request.version and request.HasField("at"):
            raise InvalidInput("give a version or a time (at), not both")
        if request.version < 0:
            raise InvalidInput(f"version must be positive, got {request.version}")
        row = self.reads.job(request.job_id)
        entries = every = history(self.store.pool, row.id)
        if request.version:
            entries = [entry for entry in every if entry.event.aggregate_version == request.version]
            if not entries:
                raise NotFound(f"job {row.id} has no version {request.version} (it is at version {len(every)})")
        elif request.HasField("at"):
            moment = request.at.ToDatetime(tzinfo=UTC)
            entries = [entry for entry in entries if entry.event.occurred_at <= moment][-1:]
            if not entries:
                raise NotFound(f"job {row.id} did not exist yet at {moment.isoformat()}")
        return jobs_pb2.JobHistory(
            entries=[
                jobs_pb2.JobHistoryEntry(
                    version=entry.event.aggregate_version,
                    event_type=entry.event.event_type,
                    occurred_at=timestamp(entry.event.occurred_at),
                    actor=entry.event.actor or "",
                    job=job_to_proto(entry.job),
                )
                for entry in entries
            ]
        )

    @rpc
    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        if request.limit < 0 or request.offset < 0:
            raise InvalidInput("limit and offset must not be negative")
        limit = min(request.limit or DEFAULT_LIMIT, MAX_JOBS_LISTED)
        state = JobState(_state_name(request.status)).value if request.status else None
        filters = replace(
            job_filters(request, request.labels),
            created_since=request.created_since.ToDatetime(tzinfo=UTC) if request.HasField("created_since") else None,
        )
        rows, total = self.reads.jobs(state, limit, request.offset, filters)
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(row) for row in rows], total_count=total)

    @rpc
    def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        if len(request.reason) > 1000:
            raise InvalidInput("the reason must be at most 1000 characters")
        reason = request.reason.strip() or f"cancelled by {caller().name}"
        grace = cancel_grace(request, self.kill_grace)
        job = self._change(request.job_id, "cancel", lambda job: job.cancel(reason, grace, self.clock()))
        return jobs_pb2.CancelJobResponse(job=job, children_not_ended=self.reads.children_not_ended(job.id))

    @rpc
    def HoldJob(self, request: jobs_pb2.HoldJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        reason, by = _hold_reason(request.reason), caller().name
        return jobs_pb2.GetJobResponse(job=self._change(request.job_id, "hold", lambda job: job.hold(by, reason)))

    @rpc
    def ReleaseJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=self._change(request.job_id, "release", Job.release))

    @rpc
    def UpdateJob(self, request: jobs_pb2.UpdateJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        """A waiting job's new priority, time limit or resources, in one command (all or
        none): checked as a submission's would be (the spec's bounds, the server's, whether
        its provider could ever have room), before whose job it is when the value alone
        decides."""
        who = caller()
        limits = [name for name in _LIMITS if request.HasField(name)]
        if not limits and not request.HasField("priority"):
            raise InvalidInput("nothing to change: give a priority, a timeout or resources (cpu, memory, disk)")
        if request.HasField("priority"):
            check_priority(request.priority)

        def update(job: Job) -> None:
            if request.HasField("priority"):
                if request.priority > job.spec.priority and not who.may(Role.OPERATE):
                    raise PermissionDenied(
                        f"token `{who.name}` may lower the priority of its jobs, not raise it (job {job.id} from "
                        f"{job.spec.priority} to {request.priority}): the operate role raises it"
                    )
                job.prioritize(request.priority)
            if limits:
                spec = self._limited(job.spec, request)
                job.change_limits(spec.timeout_seconds, spec.resources)

        return jobs_pb2.GetJobResponse(job=self._change(request.job_id, "update", update))

    def _limited(self, spec: JobSpec, request: jobs_pb2.UpdateJobRequest) -> JobSpec:
        """``spec`` with the request's limits, the server's defaults for a resource set to
        0 and its bounds, refused where a submission of it would be."""
        asked = spec.resources
        resources = Resources(
            cpu_cores=request.cpu_cores if request.HasField("cpu_cores") else asked.cpu_cores,
            memory_bytes=request.memory_bytes if request.HasField("memory_bytes") else asked.memory_bytes,
            disk_bytes=request.disk_bytes if request.HasField("disk_bytes") else asked.disk_bytes,
        )
        timeout = request.timeout_seconds if request.HasField("timeout_seconds") else spec.timeout_seconds
        limited = self.bounds.apply(replace(spec, timeout_seconds=timeout, resources=resources))
        refuse_unrunnable(limited, self.pools, self.kubernetes, self.reads)
        return limited

    @rpc
    def SignalJob(self, request: jobs_pb2.SignalJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        name = check_signal(request.signal)  # before whose job it is, or whether it runs
        return jobs_pb2.GetJobResponse(job=self._change(request.job_id, "signal", lambda job: job.signal(name)))

    @rpc
    async def ExecJob(
        self, request: jobs_pb2.ExecJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> jobs_pb2.ExecJobResponse:
        """A task, not a thread, while the command runs: it is asked for in the job's
        history (JobExecRequested), the worker's stream sends it, and its end comes back as
        JobExecEnded, whichever server the worker tells."""
        argv, timeout = check_exec(request.argv, request.timeout_seconds)
        row = await asyncio.to_thread(self.reads.job, request.job_id)
        job_id = str(row.id)
        _check_owner(caller(), row, "run a command in")
        if JobSpec.from_payload(row.spec).secret_names:
            try:
                secrets = await asyncio.to_thread(self.secrets.open, row.id)
            except SecretsPurged:
                secrets = {}  # the job has ended: refused below, as any job not running
            words = {f"word {n}": word for n, word in enumerate(argv)}
            if written := written_secrets("the command's", words, secrets):
                shell = "; a command reads a variable through a shell: job exec ID -- sh -c '… \"$NAME\" …'"
                raise InvalidInput("; ".join(written) + shell)
        asked: list[tuple[int, int]] = []

        def command() -> tuple[None, list[Job]]:
            job = self.store.load(Job, row.id)
            asked[:] = [(job.exec(argv, timeout), job.attempt)]
            return None, [job]

        with self.signals.async_waiter(job_id) as waiter:
            meta = Meta(actor=caller().name, correlation_id=job_id)
            await asyncio.to_thread(self.store.command, meta, command)
            [(index, attempt)] = asked
            return await self._exec_answer(waiter, job_id, index, attempt, timeout)

    async def _exec_answer(
        self, waiter: AsyncWaiter, job_id: str, index: int, attempt: int, timeout: int
    ) -> jobs_pb2.ExecJobResponse:
        """The end of command ``index``, once its worker said it (JobExecEnded); refused
        when its job ended first without it, or its worker stays silent past its timeout."""
        deadline = time.monotonic() + timeout + ANSWER_WITHIN
        job_over: float | None = None
        while True:
            found = await asyncio.to_thread(fetch_one, self.store.pool, "job_exec", (index, job_id), _ExecRow)
            assert found is not None  # the job's row is never deleted
            if "exit_code" in found.entry:
                result = await asyncio.to_thread(self.exec_results.take, job_id, index)
                return jobs_pb2.ExecJobResponse(
                    index=index,
                    exit_code=result.exit_code,
                    message=result.message,
                    stdout=result.stdout,
                    stderr=result.stderr,
                    stdout_bytes=result.stdout_bytes,
                    stderr_bytes=result.stderr_bytes,
                )
            now = time.monotonic()
            if found.state != JobState.RUNNING or found.attempt != attempt:
                job_over = job_over or now
                if now - job_over > EXEC_AFTER_JOB:
                    raise InvalidTransition(
                        f"job {job_id} is {found.state}: it ended before command {index} did, "
                        "and its worker did not say how that ended"
                    )
            if now > deadline:
                raise NoAnswer(
                    f"command {index} in job {job_id}: its worker did not say how it ended within "
                    f"{timeout + ANSWER_WITHIN:g}s (its timeout {timeout}s and {ANSWER_WITHIN:g}s more)"
                )
            await waiter.wait_async(1.0)

    def _change(self, job_ref: str, action: str, change: Callable[[Job], None]) -> common_pb2.Job:
        """A person's command on one job, theirs (or anyone's, for the operate role); the
        job as it is after it."""
        row = self.reads.job(job_ref)
        who = caller()
        _check_owner(who, row, action)

        def command() -> tuple[None, list[Job]]:
            job = self.store.load(Job, row.id)
            change(job)
            return None, [job]

        self.store.command(Meta(actor=who.name, correlation_id=str(row.id)), command)
        return job_to_proto(self.reads.job(str(row.id)))

    @rpc
    def RetryJob(self, request: jobs_pb2.RetryJobRequest, context: grpc.ServicerContext) -> jobs_pb2.QueueJobResponse:
        who = caller()
        row = self.reads.job(request.job_id)
        # What a retry asks is a copy of that job: its key's repeat names the same one.
        asked = jobs_pb2.RetryJobRequest(job_id=str(row.id))
        submission = Submission.keyed(request.idempotency_key, who.name, 1, asked)
        if (repeat := self._repeat(submission, None, array=False)) is not None:
            return repeat
        [job] = self._copies([row], who, submission)

        def write() -> jobs_pb2.QueueJobResponse:
            with command_transaction(self.store.pool):
                self.limits.make_room(who.name, 1)
                self.store.write([job], Meta(actor=who.name, correlation_id=str(job.id)))
            return jobs_pb2.QueueJobResponse(job_id=str(job.id))

        return first_answer(write, lambda: self._repeat(submission, None, array=False))

    @rpc
    def RetryJobs(
        self, request: jobs_pb2.RetryJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.QueueJobsResponse:
        who = caller()
        if request.workflow:
            if request.job_ids:
                raise InvalidInput("give the jobs to retry or a pipeline (workflow), not both")
            return self._retry_workflow(request, who)
        if not 1 <= len(request.job_ids) <= MOST_JOBS:
            raise InvalidInput(f"give 1 to {MOST_JOBS} jobs to retry together, got {len(request.job_ids)}")
        rows = [self.reads.job(job_ref) for job_ref in request.job_ids]
        if len({row.id for row in rows}) < len(rows):
            raise InvalidInput("a job is named twice: each is retried once")
        asked = jobs_pb2.RetryJobsRequest(job_ids=[str(row.id) for row in rows])
        submission = Submission.keyed(request.idempotency_key, who.name, len(rows), asked)

        def repeat() -> jobs_pb2.QueueJobsResponse | None:
            if earlier(self.store, self.secrets, submission, None) is None:
                return None
            return jobs_pb2.QueueJobsResponse(job_ids=[str(i) for i in submission.ids], already_submitted=True)

        if (repeated := repeat()) is not None:
            return repeated
        return self._retried(rows, who, submission, repeat)

    def _retry_workflow(self, request: jobs_pb2.RetryJobsRequest, who: Caller) -> jobs_pb2.QueueJobsResponse:
        """The jobs of a pipeline that did not succeed, as submitted. A key sent again
        answers the copies it made, though the pipeline now stands by them: its ids are every
        one the request may have had (hence written, never counted from the pipeline now)."""
        workflow, rows = self._workflow(request.workflow)
        asked = jobs_pb2.RetryJobsRequest(workflow=workflow.id)
        keyed = Submission.keyed(request.idempotency_key, who.name, MOST_JOBS, asked)

        def repeat() -> jobs_pb2.QueueJobsResponse | None:
            repeated = repeated_ids(self.store, self.secrets, keyed)
            return None if repeated is None else jobs_pb2.QueueJobsResponse(job_ids=repeated[1], already_submitted=True)

        if (repeated := repeat()) is not None:
            return repeated
        if going := [entry.job for entry in workflow.jobs if not JobState(entry.job.state).is_terminal]:
            raise InvalidInput(
                f"job {going[0].id} ({going[0].spec.name}) of pipeline {workflow.id} is {going[0].state}: "
                "a pipeline is retried once every job of it has ended (or cancel it)"
            )
        again = sorted((rows[job.id] for job in not_succeeded(workflow)), key=lambda row: (row.created_at, row.id))
        if not again:
            return jobs_pb2.QueueJobsResponse()
        submission = Submission(keyed.key, keyed.ids[: len(again)], keyed.digest)
        return self._retried(again, who, submission, repeat)

    def _retried(
        self,
        rows: list[JobRow],
        who: Caller,
        submission: Submission,
        repeat: Callable[[], jobs_pb2.QueueJobsResponse | None],
    ) -> jobs_pb2.QueueJobsResponse:
        """A copy of each job (``_copies``), written together; ``repeat``: the answer to the
        same key, sent again meanwhile."""
        jobs = self._copies(rows, who, submission)

        def write() -> jobs_pb2.QueueJobsResponse:
            with command_transaction(self.store.pool):
                self.limits.make_room(who.name, len(jobs))
                self.store.write(jobs, Meta(actor=who.name))  # each job's events correlated with itself
            return jobs_pb2.QueueJobsResponse(job_ids=[str(job.id) for job in jobs])

        return first_answer(write, repeat)

    def _copies(self, rows: list[JobRow], who: Caller, submission: Submission) -> list[Job]:
        """A copy of each finished job (``submission``'s ids, in order), with its secrets,
        linked to it (``retry_of``). One that starts after another of them starts after that
        one's copy (its ``after`` re-pointed); the jobs it starts after apart from them are
        checked as a submission's are (one that ended otherwise than asked is refused)."""
        copy_of = {str(row.id): str(job_id) for row, job_id in zip(rows, submission.ids, strict=True)}
        jobs = []
        for row, job_id in zip(rows, submission.ids, strict=True):
            _check_owner(who, row, "retry")
            if not JobState(row.state).is_terminal:
                raise InvalidInput(f"job {row.id} is {row.state}: only a finished job is retried (cancel it first)")
            try:
                secrets = self.secrets.open(row.id)
            except SecretsPurged:
                raise InvalidInput(
                    f"the secrets of job {row.id} were purged: submit it again with `job run` and its --secret values"
                ) from None
            spec = JobSpec.from_payload(row.spec)
            copied = {copy_of[ref]: condition for ref, condition in spec.after.items() if ref in copy_of}
            try:
                apart = self._after(replace(spec, after={r: c for r, c in spec.after.items() if r not in copy_of}))
            except InvalidInput as exc:
                workflow = spec.labels.get(WORKFLOW_LABEL)
                if workflow is None:
                    raise
                raise InvalidInput(
                    f"{exc.message}; `job retry --workflow {workflow}` retries it with the jobs of its pipeline "
                    "that did not succeed"
                ) from None
            spec = _submitted_from(self.bounds.apply(replace(apart, after={**apart.after, **copied})), who)
            self.pools.check(spec.pool)  # it may have been deleted since
            sealed = self.secrets.seal(job_id, secrets)
            jobs.append(Job.submit(spec, job_id, sealed, retry_of=row.id, request_digest=submission.digest))
            if spec.input_sha256:
                self.inputs.copy(str(row.id), str(job_id))
        return jobs

    @rpc
    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[jobs_pb2.JobUpdate]:
        """A task, not a thread, per watcher: reads go to the I/O threads, waits are free."""
        row = await asyncio.to_thread(self.reads.job, request.job_id)
        with STREAMS.serving(caller()), self.signals.async_waiter(str(row.id)) as waiter:
            last = None
            while True:
                row = await asyncio.to_thread(self.reads.job, request.job_id)
                if (row.state, row.updated_at) != last:
                    last = (row.state, row.updated_at)
                    yield jobs_pb2.JobUpdate(job=job_to_proto(row))
                if JobState(row.state).is_terminal and (
                    row.storage_uri is not None or not await asyncio.to_thread(self._sagas_open, row)
                ):
                    return
                await waiter.wait_async(WATCH_POLL)

    def _sagas_open(self, row: JobRow) -> bool:
        return bool(fetch_column(self.store.pool, "open_sagas_of_job", (str(row.id),)))

    @rpc
    def GetJobEvents(
        self, request: jobs_pb2.GetJobEventsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.GetJobEventsResponse:
        row = self.reads.job(request.job_id)
        return jobs_pb2.GetJobEventsResponse(
            events=[
                jobs_pb2.JobEvent(
                    event_type=event.event_type,
                    occurred_at=timestamp(event.occurred_at),
                    version=event.aggregate_version,
                    actor=event.actor or "",
                    payload_json=json.dumps(_shown(event.payload), sort_keys=True),
                )
                for event in fetch_all(self.store.pool, "job_events", (str(row.id),), JobEventRow)
            ]
        )


def _submitted_from(spec: JobSpec, who: Caller) -> JobSpec:
    """The spec labelled with the job whose API token submits it (``hodei.io/parent``), or
    with none: a copy (`job retry`) of a job another job submitted is the retrier's, and
    keeping its parent's label would have the sweep cancel it at once when that parent was
    cancelled (hodei.cancels)."""
    labels = {key: value for key, value in spec.labels.items() if key != PARENT_LABEL}
    if who.job_id is not None:
        labels[PARENT_LABEL] = who.job_id
    return spec if labels == spec.labels else replace(spec, labels=labels)


def may_act_on(who: Caller, submitted_by: str | None) -> bool:
    """Submitters act on (cancel, retry) their own jobs; the operate role on any."""
    return who.may(Role.OPERATE) or (who.may(Role.SUBMIT) and submitted_by == who.name)


def _planned(spec: JobSpec, indices: list[int], ids: list[UUID]) -> list[tuple[UUID, JobSpec]]:
    """The job submitted, or one an index of an array (whose id is its first job's)."""
    if not indices:
        return [(ids[0], spec)]
    return [
        (job_id, array_element(spec, str(ids[0]), index, len(ids))) for index, job_id in zip(indices, ids, strict=True)
    ]


def _hold_reason(reason: str) -> str:
    if len(reason) > 1000:
        raise InvalidInput("a hold's reason must be at most 1000 characters")
    return reason.strip()


def _check_owner(who: Caller, row: JobRow, action: str) -> None:
    if not may_act_on(who, row.submitted_by):
        raise PermissionDenied(
            f"token `{who.name}` may {action} only its own jobs; job {row.id} was submitted by {row.submitted_by} "
            f"(the operate role may {action} any job)"
        )


def _job_uuid(job_id: str) -> UUID:
    found = uuid_or_none(job_id)
    if found is None:
        raise InvalidInput(f"`{job_id[:40]}` is not a job's whole id")
    return found


@dataclass(frozen=True)
class UsageRow:
    """A running job, what its worker's last heartbeat said it uses (jobs_usage), and what it asks for."""

    job_id: str
    name: str
    provider_type: str
    worker_id: str
    cpu_cores: float | None
    memory_bytes: int | None
    usage_at: datetime | None
    asked_cpu_cores: float
    asked_memory_bytes: int


def usage_to_proto(row: UsageRow) -> jobs_pb2.JobUsageNow:
    found = jobs_pb2.JobUsageNow(
        job_id=row.job_id,
        name=row.name,
        provider_type=row.provider_type,
        worker_id=row.worker_id,
        sampled_at=timestamp(row.usage_at),
        asked_cpu_cores=row.asked_cpu_cores,
        asked_memory_bytes=row.asked_memory_bytes,
    )
    if row.cpu_cores is not None:
        found.cpu_cores = row.cpu_cores
    if row.memory_bytes is not None:
        found.memory_bytes = row.memory_bytes
    return found


@dataclass(frozen=True)
class _ExecRow:
    """A job's state and attempt, and one of its commands run beside its own (an empty
    entry: none of that index)."""

    state: str
    attempt: int
    entry: dict[str, Any]


@dataclass(frozen=True)
class JobEventRow:
    event_type: str
    occurred_at: datetime
    aggregate_version: int
    actor: str | None
    payload: dict[str, Any]


def _shown(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as people may see it: secrets by name only, never even sealed."""
    if "sealed_secrets" not in payload:
        return payload
    return {**payload, "sealed_secrets": dict.fromkeys(payload["sealed_secrets"], "(sealed)")}


def _state_name(status: int) -> str:
    for state in JobState:
        if state.code == status:
            return state.value
    raise InvalidInput(f"unknown job status code {status}")
