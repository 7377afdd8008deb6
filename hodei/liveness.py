"""Worker heartbeats, kept in ``hodei.worker_liveness`` rather than in the event log
(one event every two seconds per worker would drown it).

Streams note each message in memory (``seen``); a flusher writes everything noted since
its last round in one statement (``flush``), twice per heartbeat interval. A thousand
connected workers then cost two statements a second, not a thousand. A worker's record
is deleted once it is gone (``forget``), by the same statement.

Each worker beats at the pace its server gave it when it registered (``Pace``), and is
lost after its own timeout, kept with its liveness row.

Every time in a liveness row is PostgreSQL's (a sign of life is written as its age, from
this process's monotonic clock): servers judge the rows against PostgreSQL's clock, whose
host may not keep the same time as theirs."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from hodei.store.db import execute, fetch_all

# How long a forgotten worker's later signs of life (its stream closing) are ignored here;
# once its worker is TERMINATED, the database ignores them too (``touch_liveness_many``).
GONE_FOR = 600.0


@dataclass(frozen=True)
class Stale:
    worker_id: UUID
    job_id: UUID
    last_seen: datetime
    timeout: float
    cancelled: bool  # its job was cancelled: it may be stopping the job's processes


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


@dataclass(frozen=True)
class Usage:
    """What a worker's heartbeat said its job uses now: CPU cores on average since its
    last one, memory held (None: it could not tell)."""

    cpu_cores: float | None
    memory_bytes: int | None


class Liveness:
    def __init__(self, pool: ConnectionPool, server_id: str) -> None:
        self.pool = pool
        self.server_id = server_id
        self._lock = threading.Lock()
        # Each worker's last sign of life: connected, when (monotonic), its timeout if new,
        # and what its job used as its last heartbeat said (``job top``), when it said any.
        self._noted: dict[UUID, tuple[bool, float, float | None, Usage | None]] = {}
        # Workers forgotten, by when (monotonic); those the next flush deletes.
        self._gone: dict[UUID, float] = {}
        self._to_delete: set[UUID] = set()

    def seen(self, worker_id: UUID, connected: bool, timeout: float | None = None, usage: Usage | None = None) -> None:
        """Notes a sign of life (and a new timeout for the worker's silence, when its pace
        changed; what its job uses, from a heartbeat); written by the next ``flush``."""
        with self._lock:
            if worker_id in self._gone:
                return
            before = self._noted.get(worker_id)
            kept = timeout if timeout is not None or before is None else before[2]
            used = usage if usage is not None or before is None else before[3]
            self._noted[worker_id] = (connected, time.monotonic(), kept, used)

    def flush(self) -> int:
        """Writes what was noted since the last flush, and deletes the records of the
        workers forgotten since; kept for the next one on failure. Returns how many
        workers were noted."""
        now = time.monotonic()
        with self._lock:
            noted, self._noted = self._noted, {}
            gone, self._to_delete = self._to_delete, set()
            self._gone = {worker_id: at for worker_id, at in self._gone.items() if now - at < GONE_FOR}
        if not noted and not gone:
            return 0
        # A worker whose heartbeat said no usage (a sim worker, an old agent) sends no usage
        # keys: a thousand workers' flush is mostly this list's encoding.
        seen = [
            {"worker_id": i, "connected": connected, "age": round(now - at, 3), "timeout": timeout}
            | ({} if usage is None else {"cpu": usage.cpu_cores, "memory": usage.memory_bytes, "sampled": True})
            for i, (connected, at, timeout, usage) in noted.items()
        ]
        try:
            execute(
                self.pool, "touch_liveness_many", {"server": self.server_id, "seen": Jsonb(seen), "gone": list(gone)}
            )
        except Exception:
            with self._lock:
                for worker_id, value in noted.items():
                    if worker_id not in self._gone:
                        self._noted.setdefault(worker_id, value)
                self._to_delete |= gone
            raise
        return len(seen)

    def touch(self, worker_id: UUID, connected: bool, timeout: float) -> None:
        """A sign of life, and the silence after which the worker is lost."""
        execute(self.pool, "touch_liveness", (worker_id, self.server_id, connected, timeout))

    def forget(self, worker_id: UUID) -> None:
        """The worker is gone: its record is deleted by the next flush (no transaction of
        its own; only live workers' records are read), and what is noted of it later here
        is not written."""
        with self._lock:
            self._noted.pop(worker_id, None)
            self._gone[worker_id] = time.monotonic()
            self._to_delete.add(worker_id)

    def stale(self, timeout: float, heard_for: float) -> list[Stale]:
        """Workers silent for longer than their own timeout (``timeout`` when none was kept),
        counting only the last ``heard_for`` seconds (the sweeper's ``heard_for``)."""
        return fetch_all(self.pool, "stale_workers", {"timeout": timeout, "heard_for": heard_for}, Stale)
