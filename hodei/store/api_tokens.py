"""API tokens in ``hodei.api_tokens``: created, listed, revoked, and checked on each call.

A token is ``hodei_`` followed by 256 random bits; only its SHA-256 is stored, so the
token is shown once, when it is created. Every call looks its token up (one indexed
read): a revoked or expired token is refused at once, on every server.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import ConnectionPool

from hodei.domain.base import CALLER_NAME
from hodei.errors import HodeiError, InvalidInput, NotFound, Unauthenticated
from hodei.roles import ANONYMOUS, RESERVED_NAMES, Caller, Role
from hodei.store.db import execute, fetch_all, fetch_one, fetch_value
from hodei.tokens import JOB_TOKEN_PREFIX, TokenSigner

PREFIX = "hodei_"
MAX_EXPIRY_SECONDS = 10 * 365 * 24 * 3600.0
HOW_TO_GET_ONE = "ask an admin for one (`hodei-server token create --name NAME --role ROLE`)"


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class _Found(ApiToken):
    usable: bool


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    if not CALLER_NAME.match(name):
        raise InvalidInput(
            f"token name `{name}` is not valid: 1 to 64 letters, digits, `.`, `_`, `@` or `-`, starting with "
            "a letter or digit"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidInput(f"token name `{name}` is reserved")
    return name


@dataclass(frozen=True)
class _Holder:
    """The job a job's API token names: its state and worker, its submitter, and that one's
    token's role (None: the submitter has no token, as when authentication is off) and
    whether that token was revoked or has expired."""

    submitted_by: str | None
    state: str
    worker_id: str | None
    role: str | None
    submitter_refused: bool


class ApiTokens:
    def __init__(self, pool: ConnectionPool, signer: TokenSigner | None = None) -> None:
        """``signer``: what checks a job's API token (`job run --api-token`); without it, one
        is refused as any unknown token is."""
        self.pool = pool
        self.signer = signer
        self._required = False
        # The tokens calls used since ``record_use`` last wrote them down: a write a call
        # would cost each call, and a command's read-only transaction would undo it.
        self._used: set[str] = set()
        self._used_lock = threading.Lock()

    def create(self, name: str, role: Role, expires_in: float | None, created_by: str) -> tuple[ApiToken, str]:
        """The new token's row and the token itself (not stored anywhere)."""
        check_name(name)
        if expires_in is not None and not 0 < expires_in <= MAX_EXPIRY_SECONDS:
            raise InvalidInput(f"a token expires after 1 second to 10 years, not {expires_in:g} seconds")
        secret = PREFIX + secrets.token_urlsafe(32)
        params = {
            "name": name,
            "role": role.value,
            "token_hash": token_hash(secret),
            "created_by": created_by,
            "expires_in": expires_in,
        }
        row = fetch_one(self.pool, "insert_api_token", params, ApiToken)
        if row is None:
            raise InvalidInput(f"a token named `{name}` exists already (names are never reused: pick another)")
        return row, secret

    def list(self) -> list[ApiToken]:
        return fetch_all(self.pool, "list_api_tokens", None, ApiToken)

    def revoke(self, name: str, by: str) -> ApiToken:
        """``by``: who revokes it (a token's name, or ``hodei-server``), kept with it."""
        row = fetch_one(self.pool, "revoke_api_token", {"name": name, "by": by}, ApiToken)
        if row is None:
            raise NotFound(f"no token named `{name}`")
        return row

    def required(self) -> bool:
        """Authentication is on once any token was created (revoked ones count). Tokens are
        never deleted, so once on it stays on: known, it is not asked again (a flood of calls
        without a token costs no statement each)."""
        if not self._required:
            self._required = bool(fetch_value(self.pool, "any_api_token"))
        return self._required

    def authenticate(self, secret: str) -> Caller:
        if secret.startswith(JOB_TOKEN_PREFIX):
            return self._job(secret)
        credential = token_hash(secret)
        found = fetch_one(self.pool, "find_api_token", (credential,), _Found)
        if found is None:
            raise Unauthenticated(
                f"the API token was not recognised (mistyped, or from another server): {HOW_TO_GET_ONE}"
            )
        if not found.usable:
            raise _refusal(found)
        with self._used_lock:
            self._used.add(credential)
        return Caller(found.name, Role(found.role), credential=credential)

    def _job(self, secret: str) -> Caller:
        """A job's API token: its submitter, with the submit role at most, while the attempt
        it was given to runs (a job's later attempt has a token of its own)."""
        if self.signer is None:  # a process that checks no job's token (`hodei-server token`)
            raise Unauthenticated(f"the API token was not recognised: {HOW_TO_GET_ONE}")
        job_id, worker_id = self.signer.check_job_token(secret)
        found = fetch_one(self.pool, "job_token_holder", (job_id,), _Holder)
        if found is None or found.worker_id != worker_id or found.state != "RUNNING":
            raise Unauthenticated(
                f"the API token of job {job_id} ended with its attempt: a job's token is good while the attempt it "
                "was given to runs"
            )
        if found.submitter_refused:
            raise Unauthenticated(
                f"the API token of job {job_id} acts as its submitter `{found.submitted_by}`, whose token was "
                "revoked or expired"
            )
        role = Role.READ if found.role == Role.READ.value else Role.SUBMIT
        # Its credential is the token itself (nothing of it is stored to hash it against):
        # a stream it opened is held to it as long as it lasts (``refusals``).
        return Caller(found.submitted_by or ANONYMOUS, role, credential=secret, job_id=job_id)

    def record_use(self) -> None:
        """Writes down, as used now, the tokens calls used since the last time."""
        with self._used_lock:
            used, self._used = self._used, set()
        if used:
            try:
                execute(self.pool, "note_api_token_use", (list(used),))
            except HodeiError:
                with self._used_lock:
                    self._used |= used  # said next time
                raise

    def refusals(self, credentials: Collection[str]) -> dict[str, Unauthenticated]:
        """Of these credentials (``Caller.credential``), each one refused by now, with the
        refusal a new call with it would get."""
        jobs = [credential for credential in credentials if credential.startswith(JOB_TOKEN_PREFIX)]
        hashes = [credential for credential in credentials if not credential.startswith(JOB_TOKEN_PREFIX)]
        found = fetch_all(self.pool, "unusable_api_tokens", (hashes,), _Unusable) if hashes else []
        refused = {row.token_hash: _refusal(row) for row in found}
        for credential in jobs:  # a job's API token: one read each
            try:
                self._job(credential)
            except Unauthenticated as exc:
                refused[credential] = exc
        return refused


@dataclass(frozen=True)
class _Unusable(_Found):
    token_hash: str


def _refusal(found: _Found) -> Unauthenticated:
    if found.revoked_at is not None:
        by = f" by {found.revoked_by}" if found.revoked_by else ""
        return Unauthenticated(
            f"the API token `{found.name}` was revoked at {found.revoked_at:%Y-%m-%d %H:%M:%S%z}{by}"
        )
    return Unauthenticated(f"the API token `{found.name}` expired at {found.expires_at:%Y-%m-%d %H:%M:%S%z}")
