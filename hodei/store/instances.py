"""The server processes sharing this database (``hodei.server_instances``): what each
can run, where its workers dial, and whether it is alive.

An instance holds an advisory lock on a connection of its own for as long as it runs.
PostgreSQL releases it the moment that connection ends — a crash, ``kill -9``, a lost
network — so the survivors learn of a death within a sweep, and take over its claimed
outbox rows (and so its saga steps) at once instead of at lease expiry. The heartbeat
column is for people and for the provider-set check at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from hodei.store.db import connect, fetch_all, translate_errors
from hodei.store.recorder import SIGNAL_CHANNEL, WAKE_ALL
from hodei.store.sql import query

log = logging.getLogger(__name__)

# An instance beats every HEARTBEAT seconds; one silent for GONE_AFTER is not counted live.
HEARTBEAT = 2.0
GONE_AFTER = 10.0


@dataclass(frozen=True)
class Instance:
    server_id: str
    providers: list[str]
    worker_address: str
    api_address: str
    started_at: datetime
    heartbeat_at: datetime


class ServerInstances:
    def __init__(self, pool: ConnectionPool, server_id: str) -> None:
        self.pool = pool
        self.server_id = server_id
        self._record: dict[str, Any] | None = None
        self._own: psycopg.Connection[Any] | None = None
        self._peers: tuple[float, list[Instance]] = (-math.inf, [])
        self._peers_lock = threading.Lock()

    def register(self, providers: Sequence[str], worker_address: str, api_address: str) -> None:
        self._record = {
            "server_id": self.server_id,
            "providers": sorted(providers),
            "worker_address": worker_address,
            "api_address": api_address,
        }
        self._hold()

    def _hold(self) -> None:
        """(Re)opens the instance's own connection, takes its lock, (re)writes its row."""
        self._drop()
        conninfo = str(self.pool.conninfo)
        with translate_errors():
            own = connect(conninfo, autocommit=True, application_name=f"hodei-instance-{self.server_id}"[:63])
            try:
                own.execute(query("hold_instance_lock"), (self.server_id,))
                own.execute(query("register_instance"), self._record)
            except BaseException:
                own.close()
                raise
        self._own = own

    def _drop(self) -> None:
        if self._own is not None:
            with contextlib.suppress(psycopg.Error):
                self._own.close()
            self._own = None

    def beat(self) -> None:
        """Records that this instance lives; after a lost connection, takes the lock again."""
        if self._record is None:
            return
        if self._own is not None:  # None: the last try to take the lock again failed (and said so)
            try:
                with translate_errors():
                    if self._own.execute(query("instance_heartbeat"), (self.server_id,)).rowcount == 1:
                        return
            except Exception as exc:
                log.warning("instance %s lost its own connection (%s); taking its lock again", self.server_id, exc)
        self._hold()  # a peer took it for dead (or the row went): come back

    def deregister(self) -> None:
        if self._own is not None:
            with translate_errors():
                self._own.execute(query("deregister_instance"), (self.server_id,))
        self._drop()

    def peers(self) -> list[Instance]:
        """The other instances that are alive, as read at most a HEARTBEAT ago: they beat
        no more often than that, and every worker's start asks (a read a job, otherwise)."""
        with self._peers_lock:
            read_at, peers = self._peers
            if time.monotonic() - read_at < HEARTBEAT:
                return list(peers)
        alive = fetch_all(self.pool, "live_instances", (GONE_AFTER,), Instance)
        peers = [instance for instance in alive if instance.server_id != self.server_id]
        with self._peers_lock:
            self._peers = (time.monotonic(), peers)
        return list(peers)

    def take_over_the_dead(self) -> list[str]:
        """Every other instance whose lock is free is gone: its claims are released (due
        now, for anyone) and its row removed. Returns the ids taken over."""
        taken = []
        with translate_errors(), self.pool.connection() as conn:
            others = [row[0] for row in conn.execute(query("other_instances"), (self.server_id,)).fetchall()]
            for other in others:
                free = conn.execute(query("try_instance_lock"), (other,)).fetchone()
                if not (free and free[0]):
                    continue
                try:
                    released = conn.execute(query("release_claims_of"), (other,)).rowcount
                    conn.execute(query("deregister_instance"), (other,))
                    conn.execute(query("notify"), (SIGNAL_CHANNEL, WAKE_ALL))  # relays: claim them now
                finally:
                    conn.execute(query("release_instance_lock"), (other,))
                log.warning("server %s is gone: took over its %d claimed outbox rows", other, released)
                taken.append(other)
        return taken
