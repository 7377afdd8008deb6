"""hodei.jobs.CronService: cron jobs, defined, listed, paused, resumed, deleted and run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import grpc

from hodei._proto import cron_pb2, cron_pb2_grpc
from hodei.config import KubernetesConfig
from hodei.cron import CronJobRun, CronJobs
from hodei.domain.cron import Concurrency, CronJob, Definition, Schedule, which_job
from hodei.domain.spec import JobSpec
from hodei.domain.workflow import MOST_JOBS
from hodei.errors import InvalidInput, PermissionDenied
from hodei.limits import Limits
from hodei.pools import Pools
from hodei.roles import Caller
from hodei.server.access import caller
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.server.jobs_api import may_act_on, refuse_unrunnable
from hodei.server.submission import Submission, first_answer, repeated_ids
from hodei.store.readmodels import ReadModels
from hodei.wire import spec_from_proto, spec_to_proto

# The next times a cron job shows.
NEXT_TIMES = 3


def _concurrency(value: str) -> Concurrency:
    try:
        return Concurrency(value.strip().lower() or Concurrency.ALLOW.value)
    except ValueError:
        allowed = ", ".join(policy.value for policy in Concurrency)
        raise InvalidInput(f"concurrency must be one of {allowed}, got {value[:64]!r}") from None


def _specs(request: cron_pb2.CreateCronJobRequest, secrets: dict[str, str]) -> list[JobSpec]:
    """The request's specs. One job's secret names are the secrets given (as QueueJob's);
    a pipeline's jobs each name theirs (``secret_names``), and every one given must be
    named by a job and every one named given."""
    if not request.more_specs:
        return [spec_from_proto(request.spec, secrets)]
    specs = [spec_from_proto(spec, spec.secret_names) for spec in (request.spec, *request.more_specs)]
    named = {name for spec in specs for name in spec.secret_names}
    if missing := sorted(named - secrets.keys()):
        raise InvalidInput(f"the cron job's jobs name the secrets {', '.join(missing)}: give their values")
    if unnamed := sorted(secrets.keys() - named):
        raise InvalidInput(f"secret {', '.join(unnamed)}: none of the cron job's jobs names it (secret_names)")
    return specs


class CronService(cron_pb2_grpc.CronServiceServicer):
    def __init__(
        self, cron_jobs: CronJobs, pools: Pools, limits: Limits, kubernetes: KubernetesConfig, reads: ReadModels
    ) -> None:
        self.cron_jobs = cron_jobs
        self.pools = pools
        self.limits = limits
        self.reads = reads
        # HODEI_K8S_NODE_SELECTOR (``refuse_unrunnable``).
        self.kubernetes = kubernetes

    @rpc
    def CreateCronJob(self, request: cron_pb2.CreateCronJobRequest, context: grpc.ServicerContext) -> cron_pb2.CronJob:
        secrets = dict(request.secrets)
        specs = _specs(request, secrets)
        for place, spec in enumerate(specs):
            try:
                refuse_unrunnable(spec, self.pools, self.kubernetes, self.reads)
                self.cron_jobs.bounds.apply(spec)  # refused now, not at each run
            except InvalidInput as exc:
                raise InvalidInput(f"{which_job(place, spec, len(specs))}{exc}") from None
            if spec.input_sha256:
                raise InvalidInput(
                    "a cron job's runs cannot take --input files (an upload is kept an hour): "
                    "put them in an image (--image), or have the job fetch them"
                )
        definition = Definition(
            schedule=Schedule(request.schedule, request.time_zone.strip() or "UTC"),
            concurrency=_concurrency(request.concurrency),
            starting_deadline_seconds=request.starting_deadline_seconds,
            spec=specs[0],
            more_specs=tuple(specs[1:]),
        )
        who = caller()
        if request.replace:
            self._check_owner(who, request.name, "redefine")
        cron = self.cron_jobs.define(request.name, definition, secrets, who.name, replace=request.replace)
        return self._to_proto(cron)

    @rpc
    def ListCronJobs(
        self, request: cron_pb2.ListCronJobsRequest, context: grpc.ServicerContext
    ) -> cron_pb2.ListCronJobsResponse:
        every = self.cron_jobs.all()
        newest = self.cron_jobs.newest_jobs([cron.name for cron in every])
        return cron_pb2.ListCronJobsResponse(
            cron_jobs=[self._to_proto(cron, newest.get(cron.name), active=False) for cron in every]
        )

    @rpc
    def GetCronJob(self, request: cron_pb2.CronJobRequest, context: grpc.ServicerContext) -> cron_pb2.CronJob:
        return self._to_proto(self.cron_jobs.get(request.name))

    @rpc
    def PauseCronJob(self, request: cron_pb2.CronJobRequest, context: grpc.ServicerContext) -> cron_pb2.CronJob:
        return self._change(request.name, "pause", CronJob.pause)

    @rpc
    def ResumeCronJob(self, request: cron_pb2.CronJobRequest, context: grpc.ServicerContext) -> cron_pb2.CronJob:
        return self._change(request.name, "resume", CronJob.resume)

    @rpc
    def DeleteCronJob(self, request: cron_pb2.CronJobRequest, context: grpc.ServicerContext) -> cron_pb2.CronJob:
        return self._change(request.name, "delete", CronJob.delete)

    @rpc
    def RunCronJob(
        self, request: cron_pb2.RunCronJobRequest, context: grpc.ServicerContext
    ) -> cron_pb2.RunCronJobResponse:
        who = caller()
        self._check_owner(who, request.name, "run")
        asked = cron_pb2.RunCronJobRequest(name=request.name, env=request.env)
        count = len(self.cron_jobs.get(request.name).definition.specs)
        # Every id a run of this key may have had (the cron job may have been redefined since
        # with another count of jobs); this run takes the first ``count``.
        submission = Submission.keyed(request.idempotency_key, who.name, MOST_JOBS, asked)
        if (repeat := self._repeat(submission)) is not None:
            return repeat

        def write() -> cron_pb2.RunCronJobResponse:
            job_ids = self.cron_jobs.run_now(
                request.name,
                who.name,
                dict(request.env),
                self._check(who),
                submission.ids[:count],
                submission.digest,
                who.job_id,
            )
            return cron_pb2.RunCronJobResponse(job_id=str(job_ids[0]), job_ids=list(map(str, job_ids)))

        return first_answer(write, lambda: self._repeat(submission))

    @rpc
    def BackfillCronJob(
        self, request: cron_pb2.BackfillCronJobRequest, context: grpc.ServicerContext
    ) -> cron_pb2.BackfillCronJobResponse:
        who = caller()
        self._check_owner(who, request.name, "backfill")
        if not request.HasField("since"):
            raise InvalidInput("give the first time to run (since)")
        since = request.since.ToDatetime(tzinfo=UTC)
        until = request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else self.cron_jobs.clock()
        runs = self.cron_jobs.backfill(request.name, since, until, who.name, self._check(who), who.job_id)
        return cron_pb2.BackfillCronJobResponse(
            runs=[
                cron_pb2.BackfilledRun(
                    time=timestamp(run.time),
                    job_ids=[str(job_id) for job_id in run.job_ids],
                    already_run=run.already_run,
                )
                for run in runs
            ]
        )

    def _check(self, who: Caller) -> Callable[[list[JobSpec]], None]:
        """What a run asked for by ``who`` must pass, in the transaction that writes it: each
        job one its provider could run, and room under ``who``'s limit."""

        def check(specs: list[JobSpec]) -> None:
            for spec in specs:
                refuse_unrunnable(spec, self.pools, self.kubernetes, self.reads)
            self.limits.make_room(who.name, len(specs))

        return check

    def _repeat(self, submission: Submission) -> cron_pb2.RunCronJobResponse | None:
        """The run a key sent again started: of the ids it may have had, those that were
        written (a run's jobs are written together), the first being the run's."""
        if (repeated := repeated_ids(self.cron_jobs.store, self.cron_jobs.secrets, submission)) is None:
            return None
        first, job_ids = repeated
        return cron_pb2.RunCronJobResponse(job_id=str(first.id), job_ids=job_ids, already_submitted=True)

    def _change(self, name: str, action: str, act: Callable[[CronJob], None]) -> cron_pb2.CronJob:
        who = caller()
        self._check_owner(who, name, action)
        return self._to_proto(self.cron_jobs.change(name, who.name, act))

    def _check_owner(self, who: Caller, name: str, action: str) -> None:
        """Submitters act on their own cron jobs; the operate role on any (a name no cron
        job has is the action's to refuse, or to create)."""
        cron = self.cron_jobs.find(name)
        if cron is not None and not may_act_on(who, cron.owner):
            raise PermissionDenied(
                f"token `{who.name}` may {action} only its own cron jobs; {cron.name} was defined by {cron.owner} "
                f"(the operate role may {action} any)"
            )

    def _to_proto(self, cron: CronJob, newest: CronJobRun | None = None, *, active: bool = True) -> cron_pb2.CronJob:
        """``newest``: its newest job when the caller read them all at once; ``active``:
        whether to read its jobs that have not ended (one cron job's page)."""
        definition = cron.definition
        schedule = definition.schedule
        running = self.cron_jobs.active_jobs(cron.name) if active else []
        if active:
            newest = self.cron_jobs.newest_jobs([cron.name]).get(cron.name)
        message = cron_pb2.CronJob(
            name=cron.name,
            schedule=schedule.expression,
            time_zone=schedule.time_zone,
            description=schedule.explain(),
            concurrency=definition.concurrency.value,
            starting_deadline_seconds=definition.starting_deadline_seconds,
            spec=spec_to_proto(definition.spec),
            more_specs=[spec_to_proto(spec) for spec in definition.more_specs],
            paused=cron.paused,
            owner=cron.owner,
            active_job_ids=[str(run.job_id) for run in running],
            active_since=timestamp(cron.active_since),
        )
        if not cron.paused:
            for moment in schedule.following(self.cron_jobs.clock(), NEXT_TIMES):  # the times it will run at
                message.next_times.add().FromDatetime(moment)
        if newest is not None:
            message.last_job_id = str(newest.job_id)
            message.last_job_state = newest.state
            message.last_job_created_at.FromDatetime(newest.created_at)
        return message
