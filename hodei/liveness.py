"""Worker heartbeats, kept in ``hodei.worker_liveness`` rather than in the event log
(one event every two seconds per worker would drown it).

Streams note each message in memory (``seen``); a flusher writes everything noted since
its last round in one statement (``flush``), twice per heartbeat interval. A thousand
connected workers then cost two statements a second, not a thousand.

Each worker beats at the pace its server gave it when it registered (``Pace``), and is
lost after its own timeout, kept with its liveness row."""

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
    timeout: float


@dataclass(frozen=True)
class Pace:
    """A worker's heartbeat interval and the silence after which it is lost: the
    configured pair while its server takes at most ``max_per_second`` heartbeats, both
    stretched alike past that (as Nomad stretches its clients' heartbeat TTL with their
    number, with the same default of 50 a second). Each heartbeat costs the server a
    message on the worker's stream; a thousand workers at the configured pace cost it a
    tenth of a core."""

    interval: float
    timeout: float
    max_per_second: float

    def for_workers(self, connected: int) -> tuple[float, float]:
        """(interval, timeout) for a worker joining ``connected`` others."""
        stretch = max(1.0, (connected + 1) / (self.interval * self.max_per_second))
        return self.interval * stretch, self.timeout * stretch


class Liveness:
    def __init__(self, pool: ConnectionPool, server_id: str) -> None:
        self.pool = pool
        self.server_id = server_id
        self._lock = threading.Lock()
        self._noted: dict[UUID, tuple[bool, datetime, float | None]] = {}

    def seen(self, worker_id: UUID, connected: bool, timeout: float | None = None) -> None:
        """Notes a sign of life (and a new timeout for the worker's silence, when its pace
        changed); written by the next ``flush``."""
        with self._lock:
            before = self._noted.get(worker_id)
            kept = timeout if timeout is not None or before is None else before[2]
            self._noted[worker_id] = (connected, datetime.now(UTC), kept)

    def flush(self) -> int:
        """Writes what was noted since the last flush; kept for the next one on failure."""
        with self._lock:
            noted, self._noted = self._noted, {}
        if not noted:
            return 0
        seen = [
            {"worker_id": i, "connected": connected, "seen_at": at, "timeout": timeout}
            for i, (connected, at, timeout) in noted.items()
        ]
        try:
            execute(self.pool, "touch_liveness_many", (self.server_id, Jsonb(seen)))
        except Exception:
            with self._lock:
                for worker_id, value in noted.items():
                    self._noted.setdefault(worker_id, value)
            raise
        return len(seen)

    def touch(self, worker_id: UUID, connected: bool, timeout: float) -> None:
        """A sign of life, and the silence after which the worker is lost."""
        execute(self.pool, "touch_liveness", (worker_id, self.server_id, connected, timeout))

    def forget(self, worker_id: UUID) -> None:
        execute(self.pool, "forget_liveness", (worker_id,))

    def stale(self, timeout: float, hearing_since: datetime) -> list[Stale]:
        """Workers silent for longer than their own timeout (``timeout`` when none was kept)."""
        return fetch_all(self.pool, "stale_workers", {"timeout": timeout, "hearing_since": hearing_since}, Stale)
