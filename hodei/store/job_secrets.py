"""Job secrets, sealed so that they can be shredded.

Each job with secrets gets its own random AES-256 key in ``hodei.job_keys``; every value
is sealed with AES-GCM under it (bound to the job and the secret's name) and only the
sealed value enters ``JobCreated``. The event log stays append-only and replayable,
yet deleting the key (``purge``) makes every copy of the values unrecoverable: the
log, backups of it, outbox rows. Plain values exist only in the submitting request,
in memory while a worker is handed its job, and in the job's own environment.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg_pool import ConnectionPool

from hodei.errors import HodeiError, InvalidTransition
from hodei.store.db import execute, fetch_value

_FORMAT = "aesgcm1:"
_NONCE_BYTES = 12


class SecretsPurged(InvalidTransition):
    """The job's secrets were purged: its key is gone."""


def _aad(job_id: UUID, name: str) -> bytes:
    return f"hodei-job-secret/{job_id}/{name}".encode()


def seal_with(key: bytes, job_id: UUID, secrets: Mapping[str, str]) -> dict[str, str]:
    cipher = AESGCM(key)
    sealed = {}
    for name, value in secrets.items():
        nonce = os.urandom(_NONCE_BYTES)
        blob = nonce + cipher.encrypt(nonce, value.encode("utf-8"), _aad(job_id, name))
        sealed[name] = _FORMAT + base64.b64encode(blob).decode("ascii")
    return sealed


def open_with(key: bytes, job_id: UUID, sealed: Mapping[str, str]) -> dict[str, str]:
    cipher = AESGCM(key)
    values = {}
    for name, text in sealed.items():
        if not text.startswith(_FORMAT):
            raise HodeiError(f"secret {name} of job {job_id} is not in a known sealed format")
        blob = base64.b64decode(text[len(_FORMAT) :])
        try:
            plain = cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _aad(job_id, name))
        except InvalidTag:
            raise HodeiError(f"secret {name} of job {job_id} does not open with the job's key") from None
        values[name] = plain.decode("utf-8")
    return values


class JobSecrets:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def seal(self, owner_id: UUID, secrets: Mapping[str, str]) -> dict[str, str]:
        """The values sealed under the key of ``owner_id`` (a job, a cron job): the key it
        has, or a new one stored before anything else is written. A key may be there
        already: a cron job's redefinition keeps it (the definition it replaces may still
        be the live one if this write loses a race), and a job whose id is derived (a cron
        slot's, an idempotency key's) may be sealed by two racing writers, of which the
        event log keeps one. A key whose job never got written is removed by
        ``purge_expired``; deleting a cron job shreds its key (``purge``)."""
        if not secrets:
            return {}
        key = fetch_value(self.pool, "keep_job_key", {"owner": owner_id, "key": AESGCM.generate_key(bit_length=256)})
        return seal_with(bytes(key), owner_id, secrets)

    def open_sealed(self, owner_id: UUID, sealed: Mapping[str, str], owner: str) -> dict[str, str]:
        """Values sealed under the key of ``owner_id`` (a job, a cron job: ``owner``).
        SecretsPurged when shredded."""
        if not sealed:
            return {}
        key = fetch_value(self.pool, "job_key", (owner_id,))
        if key is None:
            raise SecretsPurged(f"the secrets of {owner} were purged: its worker cannot be given them")
        return open_with(bytes(key), owner_id, sealed)

    def open(self, job_id: UUID) -> dict[str, str]:
        """The job's plain values, to hand to its worker. SecretsPurged when shredded."""
        sealed = fetch_value(self.pool, "job_sealed_secrets", (str(job_id),)) or {}
        return self.open_sealed(job_id, sealed, f"job {job_id}")

    def purge(self, job_id: UUID) -> bool:
        """Shreds the job's secrets; False when there was nothing (left) to purge."""
        return execute(self.pool, "delete_job_key", (job_id,)) > 0

    def purge_expired(self, retention_seconds: float) -> int:
        """Shreds the secrets of jobs that ended more than ``retention_seconds`` ago."""
        total = 0
        while (deleted := execute(self.pool, "delete_expired_job_keys", (retention_seconds,))) > 0:
            total += deleted
        return total
