"""Worker credentials: single-use registration tokens and session tokens; and a job's API
token (`job run --api-token`).

Tokens are HMACs of (worker id, job id, nonce) under a key kept in the database, so
any server process can check them, and the event log stores only the nonce. A
registration token works once because registering moves the worker out of
CREATING/CONNECTING (an optimistic-concurrency write), and it expires. A job's API token
is an HMAC of (job id, worker id): nothing of it is stored, and it is good only while its
job runs on that worker (hodei.store.api_tokens.ApiTokens.authenticate checks).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from psycopg_pool import ConnectionPool

from hodei.errors import HodeiError, Unauthenticated
from hodei.store.db import fetch_value

# A job's API token starts so (an API token made by `token create`, ``hodei_``).
JOB_TOKEN_PREFIX = "hodeijob_"


def new_nonce() -> str:
    return secrets.token_hex(16)


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_database(cls, pool: ConnectionPool) -> TokenSigner:
        key = fetch_value(pool, "worker_token_key")
        if key is None:
            raise HodeiError("the worker token key is missing: run `hodei-server migrate`")
        return cls(bytes.fromhex(key))

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, "/".join(parts).encode(), hashlib.sha256).hexdigest()

    def registration_token(self, worker_id: str, job_id: str, nonce: str) -> str:
        return self._sign("register", worker_id, job_id, nonce)

    def session_token(self, worker_id: str, nonce: str) -> str:
        return self._sign("session", worker_id, nonce)

    def job_token(self, job_id: str, worker_id: str) -> str:
        """The API token a job's attempt on ``worker_id`` is given (its HODEI_TOKEN)."""
        return f"{JOB_TOKEN_PREFIX}{job_id}.{worker_id}.{self._sign('job-api', job_id, worker_id)}"

    def check_job_token(self, token: str) -> tuple[str, str]:
        """The job and worker a job's API token was made for; Unauthenticated when it is not
        one this installation made."""
        job_id, _, rest = token.removeprefix(JOB_TOKEN_PREFIX).partition(".")
        worker_id, _, signature = rest.partition(".")
        if not hmac.compare_digest(signature, self._sign("job-api", job_id, worker_id)):
            raise Unauthenticated("the job's API token was not recognised (mistyped, or from another installation)")
        return job_id, worker_id

    def check_registration(self, token: str, worker_id: str, job_id: str, nonce: str) -> None:
        if not hmac.compare_digest(token, self.registration_token(worker_id, job_id, nonce)):
            raise Unauthenticated(f"wrong registration token for worker {worker_id} and job {job_id}")

    def check_session(self, token: str, worker_id: str, nonce: str | None) -> None:
        if nonce is None or not hmac.compare_digest(token, self.session_token(worker_id, nonce)):
            raise Unauthenticated(f"wrong session token for worker {worker_id}")
