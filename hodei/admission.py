"""Admission control: each provider runs at most its capacity of workers; the other jobs
wait in a queue, in PostgreSQL, and leave it by priority, then in submission order.

A job's provisioning saga chooses its provider, then waits (``wait_for_slot``) until the
job is admitted: a ``JobAdmitted`` event. Admitting is done under an advisory lock per
provider, so servers sharing the database never admit past the capacity between them;
it runs when a job joins a queue, when a worker is terminated (a slot frees) and on
every sweep. Slots in use are counted from the read models, never kept in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import ConnectionPool

from hodei.domain.job import Job
from hodei.domain.provider import ProviderType
from hodei.errors import ConcurrencyConflict, InvalidTransition
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_all, translate_errors
from hodei.store.sql import query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    limit: int
    in_use: int

    @property
    def free(self) -> int:
        return max(self.limit - self.in_use, 0)


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    name: str
    provider: str
    priority: int
    created_at: datetime
    position: int
    retry_at: datetime | None


class Admission:
    def __init__(self, store: HodeiStore, defaults: Mapping[ProviderType, int]) -> None:
        self.store = store
        self.pool: ConnectionPool = store.pool
        self.defaults = dict(defaults)

    def capacity(self, provider: ProviderType) -> Capacity:
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(query("provider_capacity_and_use"), {"provider": provider.value}).fetchone()
        assert row is not None
        configured, in_use = row
        return Capacity(int(configured or self.defaults[provider]), int(in_use))

    def admit(self, provider: ProviderType) -> int:
        """Admits as many queued jobs of ``provider`` as it has free slots; how many."""
        admitted = 0
        with translate_errors(), self.pool.connection() as conn:
            conn.execute(query("lock_admission"), (provider.value,))
            try:
                free = self.capacity(provider).free
                if free == 0:
                    return 0
                rows = conn.execute(query("next_in_queue"), {"provider": provider.value, "limit": free}).fetchall()
                for (job_id,) in rows:
                    admitted += self._admit_one(str(job_id))
            finally:
                conn.execute(query("unlock_admission"), (provider.value,))
        return admitted

    def _admit_one(self, job_id: str) -> int:
        def run() -> tuple[int, list[Job]]:
            job = self.store.load(Job, job_id)
            try:
                job.admit()
            except InvalidTransition:
                return 0, []  # cancelled, or moved on, since it was read from the queue
            return 1, [job]

        try:
            return self.store.command(Meta(actor=SYSTEM, correlation_id=job_id), run)
        except ConcurrencyConflict:
            log.info("job %s changed while being admitted; the next round looks again", job_id)
            return 0

    def admit_all(self, providers: list[ProviderType]) -> None:
        for provider in providers:
            self.admit(provider)

    def queue(self, limit: int) -> list[QueuedJob]:
        return fetch_all(self.pool, "queued_jobs", {"limit": limit}, QueuedJob)
