"""The server processes sharing this database (``hodei.server_instances``): what each
can run, where its workers dial, and when it last said it was alive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import ConnectionPool

from hodei.store.db import execute, fetch_all

# An instance silent for this long is gone (it beats every HEARTBEAT seconds).
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

    def register(self, providers: Sequence[str], worker_address: str, api_address: str) -> None:
        params = {
            "server_id": self.server_id,
            "providers": sorted(providers),
            "worker_address": worker_address,
            "api_address": api_address,
        }
        execute(self.pool, "register_instance", params)

    def beat(self) -> None:
        execute(self.pool, "instance_heartbeat", (self.server_id,))

    def deregister(self) -> None:
        execute(self.pool, "deregister_instance", (self.server_id,))

    def peers(self) -> list[Instance]:
        """The other instances that are alive."""
        alive = fetch_all(self.pool, "live_instances", (GONE_AFTER,), Instance)
        return [instance for instance in alive if instance.server_id != self.server_id]
