"""Worker heartbeats, kept in ``hodei.worker_liveness`` rather than in the event log
(one event every two seconds per worker would drown it).

Streams note each message in memory (``seen``); a flusher writes everything noted since
its last round in one statement (``flush``), twice per heartbeat interval. A thousand
connected workers then cost two statements a second, not a thousand."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from hodei.store.db import execute, fetch_all


@dataclass(frozen=True)
class Stale:
    worker_id: UUID
    job_id: UUID
    last_seen: datetime


class Liveness:
    def __init__(self, pool: ConnectionPool, server_id: str) -> None:
        self.pool = pool
        self.server_id = server_id
        self._lock = threading.Lock()
        self._noted: dict[UUID, tuple[bool, datetime]] = {}

    def seen(self, worker_id: UUID, connected: bool) -> None:
        """Notes a sign of life; written by the next ``flush``."""
        with self._lock:
            self._noted[worker_id] = (connected, datetime.now(UTC))

    def flush(self) -> int:
        """Writes what was noted since the last flush; kept for the next one on failure."""
        with self._lock:
            noted, self._noted = self._noted, {}
        if not noted:
            return 0
        seen = [{"worker_id": i, "connected": connected, "seen_at": at} for i, (connected, at) in noted.items()]
        try:
            execute(self.pool, "touch_liveness_many", (self.server_id, Jsonb(seen)))
        except Exception:
            with self._lock:
                for worker_id, value in noted.items():
                    self._noted.setdefault(worker_id, value)
            raise
        return len(seen)

    def touch(self, worker_id: UUID, connected: bool) -> None:
        execute(self.pool, "touch_liveness", (worker_id, self.server_id, connected))

    def forget(self, worker_id: UUID) -> None:
        execute(self.pool, "forget_liveness", (worker_id,))

    def stale(self, timeout: float, hearing_since: datetime) -> list[Stale]:
        return fetch_all(self.pool, "stale_workers", {"timeout": timeout, "hearing_since": hearing_since}, Stale)
