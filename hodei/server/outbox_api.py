"""hodei.jobs.OutboxService: deliveries that gave up, and putting them back.

A row is dead-lettered after HODEI_RELAY_MAX_ATTEMPTS failed deliveries. Once the cause
is fixed, a redrive puts it back with its attempts reset; the relay delivers it again
like any other row. A saga that was aborted when its own event was dead-lettered stays
failed: `job retry` runs such a job again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import grpc
from psycopg_pool import ConnectionPool

from hodei._proto import outbox_pb2, outbox_pb2_grpc
from hodei.errors import InvalidInput, NotFound
from hodei.server.access import caller
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.store.db import fetch_all, fetch_column

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_IDS = 1000


@dataclass(frozen=True)
class _DeadLetter:
    id: str
    position: int
    event_type: str
    aggregate_type: str
    aggregate_id: str
    job_id: str
    attempts: int
    last_error: str
    created_at: datetime


def _row_id(text: str) -> str:
    try:
        return str(UUID(text.strip()))
    except ValueError:
        raise InvalidInput(f"{text[:64]!r} is not an outbox row id (a UUID, from `outbox dead-letters`)") from None


class OutboxService(outbox_pb2_grpc.OutboxServiceServicer):
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @rpc
    def ListDeadLetters(
        self, request: outbox_pb2.ListDeadLettersRequest, context: grpc.ServicerContext
    ) -> outbox_pb2.ListDeadLettersResponse:
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        rows = fetch_all(self.pool, "dead_letters", (min(request.limit or DEFAULT_LIMIT, MAX_LIMIT),), _DeadLetter)
        return outbox_pb2.ListDeadLettersResponse(
            dead_letters=[
                outbox_pb2.DeadLetter(
                    id=row.id,
                    position=row.position,
                    event_type=row.event_type,
                    aggregate_type=row.aggregate_type,
                    aggregate_id=row.aggregate_id,
                    job_id=row.job_id,
                    attempts=row.attempts,
                    last_error=row.last_error,
                    created_at=timestamp(row.created_at),
                )
                for row in rows
            ]
        )

    @rpc
    def Redrive(self, request: outbox_pb2.RedriveRequest, context: grpc.ServicerContext) -> outbox_pb2.RedriveResponse:
        if request.all == bool(request.ids):
            raise InvalidInput("give the ids of the rows to redrive, or all")
        if len(request.ids) > MAX_IDS:
            raise InvalidInput(f"at most {MAX_IDS} ids at once (or all)")
        ids = [_row_id(text) for text in request.ids]
        redriven = fetch_column(self.pool, "redrive_dead_letters", {"all": request.all, "ids": ids})
        missing = sorted(set(ids) - set(redriven))
        if missing and not redriven:
            raise NotFound(f"no dead letter {', '.join(missing)} (see `outbox dead-letters`)")
        log.info(
            "%s redrove %d outbox rows%s",
            caller().name,
            len(redriven),
            f"; not dead letters: {missing}" if missing else "",
        )
        return outbox_pb2.RedriveResponse(redriven=redriven)
