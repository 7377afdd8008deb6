"""Who may call what: roles, callers, and the rule of every API method.

Roles include the ones before them: ``read`` < ``submit`` < ``operate`` < ``admin``.
Each method of every service has exactly one rule here (a test walks the services'
descriptors, so a method added without a rule fails it); the server refuses a method
it has no rule for. Worker methods authenticate with the worker's own single-use
credential, never with an API token; the health service is open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hodei.errors import InvalidInput


class Role(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    OPERATE = "operate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(value.strip().lower())
        except ValueError:
            known = ", ".join(role.value for role in cls)
            raise InvalidInput(f"unknown role `{value}`; roles: {known}") from None


class Gate(StrEnum):
    """Methods that are not guarded by an API token's role."""

    OPEN = "open"
    WORKER = "worker"


# The actor of what the platform does by itself (sagas, sweeps, health checks).
SYSTEM = "system"
# The actor of every request when authentication is off.
ANONYMOUS = "anonymous"
RESERVED_NAMES = frozenset({SYSTEM, ANONYMOUS})


@dataclass(frozen=True)
class Caller:
    """Who is calling, as recorded in ``actor`` of the events the call causes."""

    name: str
    role: Role
    authenticated: bool = True
    # The SHA-256 of the API token shown: a stream that outlasts its call is held to the
    # token again while it lasts (``hodei.server.access.keep_tokens``).
    credential: str | None = field(default=None, repr=False)
    # The job whose API token this is (`job run --api-token`): it acts as its submitter.
    job_id: str | None = None

    def may(self, needed: Role) -> bool:
        return self.role.allows(needed)


# Without authentication every caller may do everything: the server then listens on
# loopback only (see hodei.server.main).
NOBODY_CHECKED = Caller(ANONYMOUS, Role.ADMIN, authenticated=False)

_J = "/hodei.jobs.JobExecutionService/"
_W = "/hodei.jobs.WorkerAgentService/"
_S = "/hodei.jobs.SchedulerService/"
_P = "/hodei.jobs.ProviderManagementService/"
_M = "/hodei.jobs.MetricsService/"
_L = "/hodei.jobs.LogStreamService/"
_A = "/hodei.jobs.AccessService/"
_G = "/hodei.jobs.SagaService/"
_O = "/hodei.jobs.OutboxService/"
_C = "/hodei.jobs.CronService/"
_PL = "/hodei.jobs.PoolService/"
_AR = "/hodei.jobs.ArtifactService/"
_LM = "/hodei.jobs.LimitService/"
_WH = "/hodei.jobs.WebhookService/"
_AU = "/hodei.jobs.AuditService/"
_R = "/hodei.jobs.ReportService/"

RULES: dict[str, Role | Gate] = {
    _J + "QueueJob": Role.SUBMIT,
    _J + "QueueJobs": Role.SUBMIT,
    _J + "GetJobsUsage": Role.READ,
    _J + "GetJob": Role.READ,
    _J + "DescribeJob": Role.READ,
    _J + "GetWorkflow": Role.READ,
    _J + "GetJobHistory": Role.READ,
    _J + "ListJobs": Role.READ,
    # Submitters cancel their own jobs; `operate` cancels any (checked by the method).
    _J + "CancelJob": Role.SUBMIT,
    # Submitters retry their own jobs; `operate` retries any (checked by the method).
    _J + "RetryJob": Role.SUBMIT,
    _J + "RetryJobs": Role.SUBMIT,
    # Submitters hold and release their own jobs; `operate` any (checked by the method).
    _J + "HoldJob": Role.SUBMIT,
    _J + "ReleaseJob": Role.SUBMIT,
    # Submitters lower their own jobs' priority; `operate` raises any (checked by the method).
    _J + "UpdateJob": Role.SUBMIT,
    # Submitters signal their own running jobs; `operate` any (checked by the method).
    _J + "SignalJob": Role.SUBMIT,
    _J + "ExecJob": Role.SUBMIT,
    _J + "WatchJob": Role.READ,
    _J + "GetJobEvents": Role.READ,
    _W + "Register": Gate.WORKER,
    _W + "Connect": Gate.WORKER,
    _W + "UploadArtifact": Gate.WORKER,
    _W + "FetchArtifact": Gate.WORKER,
    _S + "GetQueueStatus": Role.READ,
    _S + "ListWorkers": Role.READ,
    _P + "ListProviders": Role.READ,
    _P + "GetProvider": Role.READ,
    _P + "EnableProvider": Role.OPERATE,
    _P + "DisableProvider": Role.OPERATE,
    _P + "CheckProviderHealth": Role.READ,
    _P + "SetProviderCapacity": Role.OPERATE,
    _M + "GetMetrics": Role.READ,
    _L + "SubscribeLogs": Role.READ,
    _L + "GetLogs": Role.READ,
    # A job's artifacts are its output, as its log is.
    _AR + "ListArtifacts": Role.READ,
    _AR + "ReadArtifact": Role.READ,
    _AR + "UploadInput": Role.SUBMIT,
    _AR + "FindInput": Role.SUBMIT,
    _G + "ListSagas": Role.READ,
    _G + "GetSaga": Role.READ,
    _O + "ListDeadLetters": Role.READ,
    _O + "Redrive": Role.OPERATE,
    # Submitters define, change and run their own cron jobs; `operate` any (checked by the method).
    _C + "CreateCronJob": Role.SUBMIT,
    _C + "ListCronJobs": Role.READ,
    _C + "GetCronJob": Role.READ,
    _C + "PauseCronJob": Role.SUBMIT,
    _C + "ResumeCronJob": Role.SUBMIT,
    _C + "DeleteCronJob": Role.SUBMIT,
    _C + "RunCronJob": Role.SUBMIT,
    _C + "BackfillCronJob": Role.SUBMIT,
    # Pools are the operators' to size; everyone reads them (`queue` says why a job waits).
    _PL + "SetPool": Role.OPERATE,
    _PL + "DeletePool": Role.OPERATE,
    _PL + "ListPools": Role.READ,
    _PL + "GetPool": Role.READ,
    # Submitter limits likewise: the operators' to set, everyone's to read.
    _LM + "SetSubmitterLimit": Role.OPERATE,
    _LM + "DeleteSubmitterLimit": Role.OPERATE,
    _LM + "ListSubmitterLimits": Role.READ,
    _LM + "GetSubmitterLimit": Role.READ,
    # Webhooks are the admins': a webhook's URL may hold a credential, and it is sent every
    # job it matches, whoever submitted it.
    _WH + "SetWebhook": Role.ADMIN,
    _WH + "ListWebhooks": Role.ADMIN,
    _WH + "GetWebhook": Role.ADMIN,
    _WH + "DeleteWebhook": Role.ADMIN,
    _WH + "TestWebhook": Role.ADMIN,
    _WH + "RotateWebhookSecret": Role.ADMIN,
    _WH + "Redeliver": Role.ADMIN,
    # Who changed what is the operators' to read (a token's name beside each change).
    _AU + "ListChanges": Role.OPERATE,
    _R + "ReportJobs": Role.READ,
    _A + "CreateToken": Role.ADMIN,
    _A + "ListTokens": Role.ADMIN,
    _A + "RevokeToken": Role.ADMIN,
    _A + "WhoAmI": Role.READ,
    "/grpc.health.v1.Health/Check": Gate.OPEN,
    "/grpc.health.v1.Health/Watch": Gate.OPEN,
}


def rule_of(method: str) -> Role | Gate | None:
    """The rule of a full method name (``/package.Service/Method``); None: refuse.
    Reflection is open: it tells which methods exist, not what any holds."""
    if method.startswith("/grpc.reflection."):
        return Gate.OPEN
    return RULES.get(method)
