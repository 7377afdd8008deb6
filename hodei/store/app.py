"""The eventsourcing Application through which every aggregate is loaded and saved."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import orjson
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import ApplicationRecorder, JSONTranscoder, Transcoder
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

from hodei.domain.base import HodeiAggregate
from hodei.errors import ConcurrencyConflict, NotFound
from hodei.store.recorder import Ack, DomainEventRecorder

A = TypeVar("A", bound=HodeiAggregate)
R = TypeVar("R")


def _replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's projector without its per-event ``isinstance`` check against a
    runtime Protocol (about a twentieth of the server's CPU): our events all mutate."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class PlainJSONTranscoder(JSONTranscoder):
    """The library's JSON transcoder, decoding with orjson: our payloads are plain JSON
    (the recorder refuses type wrappers), so a stored state's one wrapped value is its
    ``timestamp``; the library's decoder calls a Python hook for every object, a quarter
    of the time it takes to load an aggregate. A state with any other wrapper is decoded
    the library's way."""

    def decode(self, data: bytes) -> Any:
        if data.count(b'"_type_"') != 1:
            return super().decode(data)
        state = orjson.loads(data)
        stamp = state.get("timestamp")
        if not isinstance(stamp, dict):
            return super().decode(data)
        state["timestamp"] = self._decode_obj(stamp)
        return state


@dataclass(frozen=True)
class Meta:
    """Who caused a write and in which flow: becomes ``actor`` and ``correlation_id``."""

    actor: str
    correlation_id: str | None = None
    ack: Ack | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"actor": self.actor, "correlation_id": self.correlation_id, "ack": self.ack}


class HodeiStore(Application[UUID]):
    """One application for every aggregate: one event log, one position sequence."""

    name = "Hodei"

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        # In-memory persistence is only the factory's default; the recorder is ours.
        super().__init__(env={"PERSISTENCE_MODULE": "eventsourcing.popo", "IS_SNAPSHOTTING_ENABLED": "n"})

    def construct_recorder(self) -> ApplicationRecorder:
        return DomainEventRecorder(self.pool)

    def construct_transcoder(self) -> Transcoder:
        transcoder = PlainJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def load(self, kind: type[A], aggregate_id: UUID | str) -> A:
        try:
            aggregate: HodeiAggregate = self.repository.get(UUID(str(aggregate_id)), projector_func=_replay)
        except (AggregateNotFoundError, ValueError):
            raise NotFound(f"{kind.__name__.lower()} {aggregate_id} not found") from None
        if not isinstance(aggregate, kind):
            raise NotFound(f"{kind.__name__.lower()} {aggregate_id} not found")
        return aggregate

    def find(self, kind: type[A], aggregate_id: UUID | str) -> A | None:
        try:
            return self.load(kind, aggregate_id)
        except NotFound:
            return None

    def write(self, aggregates: Sequence[HodeiAggregate | None], meta: Meta) -> None:
        """Saves what changed. Nothing changed, nothing written: a handler's outbox row is
        then acknowledged in the relay's next bulk acknowledgement, not in a transaction of
        its own."""
        if any(aggregate is not None and aggregate.pending_events for aggregate in aggregates):
            self.save(*aggregates, **meta.kwargs())

    def command(self, meta: Meta, run: Callable[[], tuple[R, Sequence[HodeiAggregate | None]]], attempts: int = 8) -> R:
        """Runs ``run`` (load, decide, return aggregates to save) and saves, retrying on
        concurrent writes: each retry reloads, so the command sees the winner's state."""
        for attempt in Retrying(
            retry=retry_if_exception_type(ConcurrencyConflict),
            stop=stop_after_attempt(attempts),
            wait=wait_random(0.001, 0.02),
            reraise=True,
        ):
            with attempt:
                result, changed = run()
                self.write(changed, meta)
        return result
