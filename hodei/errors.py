"""Every error Hodei raises on purpose.

    HodeiError
    ├── InvalidInput          bad request from a user or a worker   -> INVALID_ARGUMENT
    ├── NotFound              no such job, worker, saga or provider -> NOT_FOUND
    ├── AlreadyExists         a name (an idempotency key) already taken -> ALREADY_EXISTS
    ├── InvalidTransition     a state machine refused a command     -> FAILED_PRECONDITION
    ├── LimitReached          a limit refused it: a submitter's, an attempt's artifact files -> RESOURCE_EXHAUSTED
    ├── Unauthenticated       no credentials, or wrong ones         -> UNAUTHENTICATED
    ├── PermissionDenied      the caller's role does not allow it   -> PERMISSION_DENIED
    ├── ConcurrencyConflict   another writer saved the aggregate first (retry by reloading) -> ABORTED
    ├── LeaseLost             an outbox row was re-claimed by another relay meanwhile
    ├── StoreUnavailable      PostgreSQL cannot be reached          -> UNAVAILABLE
    ├── ShuttingDown          the server is stopping: its streams end -> UNAVAILABLE
    ├── NoAnswer              a worker did not answer in time (`job exec`) -> DEADLINE_EXCEEDED
    ├── ProviderError         a provider call failed (``retryable`` says whether to try again)
    │   └── ProviderUnavailable   the provider is disabled, unhealthy or not initialised
    └── StepTimeout           a saga step ran past its timeout

The module is pure so that ``hodei.domain`` can raise these. Each docstring is the
default message; the relay and the saga engine read ``retryable`` to choose between
retrying and giving up.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class HodeiError(Exception):
    """Hodei failed."""

    retryable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(HodeiError):
    """The request is invalid."""


class NoSuchAttempt(InvalidInput):
    """An attempt asked for (of a log, of artifacts) past those the job has begun."""

    def __init__(self, job_id: object, attempts: int, attempt: int) -> None:
        super().__init__(f"job {job_id} has had {attempts} attempt(s); there is no attempt {attempt}")


class NotFound(HodeiError):
    """Not found."""


class AlreadyExists(HodeiError):
    """It exists already."""


class InvalidTransition(HodeiError):
    """The command is not allowed in the current state."""


class LimitReached(HodeiError):
    """A limit refused the request: it would pass it."""


class Unauthenticated(HodeiError):
    """The credentials were refused."""


class PermissionDenied(HodeiError):
    """The caller's role does not allow this."""


class ConcurrencyConflict(HodeiError):
    """Another writer changed the aggregate first."""

    retryable = True


class LeaseLost(HodeiError):
    """The outbox row's lease expired and another relay claimed it."""


class ShuttingDown(HodeiError):
    """The server is shutting down: ask it again once it is back, or another server."""

    retryable = True


class NoAnswer(HodeiError):
    """A worker did not answer in time."""


class StoreUnavailable(HodeiError):
    """PostgreSQL is unavailable."""

    retryable = True
    # How its message starts: the CLI tells it from a server it cannot reach (both are
    # UNAVAILABLE to gRPC, and only one is the server's answer).
    PREFIX = "PostgreSQL is unavailable"


class ProviderError(HodeiError):
    """The provider failed."""

    def __init__(self, message: str | None = None, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ProviderUnavailable(ProviderError):
    """The provider is not available."""


class StepTimeout(HodeiError):
    """The saga step ran past its timeout."""

    retryable = True


def excerpt(text: str) -> str:
    """A user's text as an error message quotes it: short, and without control characters."""
    clean = _CONTROL.sub("?", text)
    return clean if len(clean) <= 40 else clean[:37] + "..."
