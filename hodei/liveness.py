"""Worker heartbeats, kept in ``hodei.worker_liveness`` rather than in the event log
(one event every two seconds per worker would drown it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg_pool import ConnectionPool

from hodei.store.db import translate_errors
from hodei.store.sql import query


@dataclass(frozen=True)
class Stale:
    worker_id: UUID
    job_id: UUID
    last_seen: datetime


class Liveness:
    def __init__(self, pool: ConnectionPool, server_id: str) -> None:
        self.pool = pool
        self.server_id = server_id

    def touch(self, worker_id: UUID, connected: bool) -> None:
        with translate_errors(), self.pool.connection() as conn:
            conn.execute(query("touch_liveness"), (worker_id, self.server_id, connected))

    def forget(self, worker_id: UUID) -> None:
        with translate_errors(), self.pool.connection() as conn:
            conn.execute(query("forget_liveness"), (worker_id,))

    def stale(self, timeout: float, hearing_since: datetime) -> list[Stale]:
        with translate_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("stale_workers"), {"timeout": timeout, "hearing_since": hearing_since}).fetchall()
        return [Stale(*row) for row in rows]
