"""Worker credentials: single-use registration tokens and session tokens.

Tokens are HMACs of (worker id, job id, nonce) under a key kept in the database, so
any server process can check them, and the event log stores only the nonce. A
registration token works once because registering moves the worker out of
CREATING/CONNECTING (an optimistic-concurrency write), and it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from psycopg_pool import ConnectionPool

from hodei.errors import HodeiError, Unauthenticated
from hodei.store.db import fetch_value


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

    def check_registration(self, token: str, worker_id: str, job_id: str, nonce: str) -> None:
        if not hmac.compare_digest(token, self.registration_token(worker_id, job_id, nonce)):
            raise Unauthenticated(f"wrong registration token for worker {worker_id} and job {job_id}")

    def check_session(self, token: str, worker_id: str, nonce: str | None) -> None:
        if nonce is None or not hmac.compare_digest(token, self.session_token(worker_id, nonce)):
            raise Unauthenticated(f"wrong session token for worker {worker_id}")
