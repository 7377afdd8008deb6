"""The eventsourcing Application through which every aggregate is loaded and saved."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
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
from hodei.store.db import command_transaction
from hodei.store.events import EventRecord
from hodei.store.recorder import Ack, DomainEventRecorder, LocalRelay, Unmoved

A = TypeVar("A", bound=HodeiAggregate)
# Rows whose decoded events ``HodeiStore`` keeps: the flows of about 500 jobs in flight (20 rows
# a job), about 10 MB (1,000 sim jobs' flows, ~20,000 rows, added 22 MB to the server's RSS).
DECODED_ROWS = 10_000
R = TypeVar("R")
T = TypeVar("T")

# The aggregates a command's current try has loaded, by id (``HodeiStore.command``).
# Per thread and task: an action's effect, on another thread, gets a copy (``sharing``).
_in_hand: ContextVar[dict[UUID, HodeiAggregate] | None] = ContextVar("in_hand", default=None)
# What the current try's read of its job's flow saw (``keep_unmoved``).
_flow_read: ContextVar[Unmoved | None] = ContextVar("flow_read", default=None)


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
    # The events whose delivery the command did itself (what their route would do is in
    # its transaction): their rows are written delivered, as rows no route wants.
    done: Callable[[EventRecord], bool] | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"actor": self.actor, "correlation_id": self.correlation_id, "ack": self.ack, "done": self.done}


class HodeiStore(Application[UUID]):
    """One application for every aggregate: one event log, one position sequence."""

    name = "Hodei"

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        # Decoded events of the rows jobs' flows were read from, by (aggregate id, row
        # version), oldest out first: a committed row never changes (the log is append-only)
        # and events are immutable (aggregates copy what they keep of them), while a flow is
        # read again at every command about its job.
        self._decoded: dict[tuple[str, int], list[Any]] = {}
        self._decoding = threading.Lock()
        # In-memory persistence is only the factory's default; the recorder is ours.
        super().__init__(env={"PERSISTENCE_MODULE": "eventsourcing.popo", "IS_SNAPSHOTTING_ENABLED": "n"})

    def construct_recorder(self) -> ApplicationRecorder:
        return DomainEventRecorder(self.pool)

    def construct_transcoder(self) -> Transcoder:
        transcoder = PlainJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def held(self, kind: type[A]) -> list[A]:
        """The aggregates of ``kind`` the current try of a ``command`` has in hand (with a
        correlation: every one of the job's flow that has not ended), oldest first."""
        in_hand = _in_hand.get() or {}
        return sorted((a for a in in_hand.values() if isinstance(a, kind)), key=lambda a: a.created_on)

    def load(self, kind: type[A], aggregate_id: UUID | str) -> A:
        """The aggregate's current state; inside a ``command``, the one already in hand
        when the command loaded it before (with whatever it changed since)."""
        in_hand = _in_hand.get()
        try:
            key = UUID(str(aggregate_id))
            aggregate: HodeiAggregate | None = in_hand.get(key) if in_hand is not None else None
            if aggregate is None:
                aggregate = self.repository.get(key, projector_func=_replay)
                if in_hand is not None:
                    in_hand[key] = aggregate
        except (AggregateNotFoundError, ValueError):
            raise NotFound(f"{kind.__name__.lower()} {aggregate_id} not found") from None
        if not isinstance(aggregate, kind):
            raise NotFound(f"{kind.__name__.lower()} {aggregate_id} not found")
        return aggregate

    def _flow(self, correlation_id: str) -> tuple[dict[UUID, HodeiAggregate], Unmoved]:
        """The job's flow, its rows decoded once per process (``_decoded``)."""
        flow: dict[str, list[Any]] = {}
        rows, read = self._recorder.select_flow(correlation_id)
        for row in rows:
            key = (row.aggregate_id, row.version)
            events = self._decoded.get(key)
            if events is None:
                events = [self.mapper.to_domain_event(stored) for stored in row.stored()]
                with self._decoding:
                    self._decoded[key] = events
                    if len(self._decoded) > DECODED_ROWS:
                        del self._decoded[next(iter(self._decoded))]
            flow.setdefault(row.aggregate_id, []).extend(events)
        return {UUID(aggregate_id): _replay(None, events) for aggregate_id, events in flow.items()}, read

    def keep_unmoved(self) -> None:
        """Has the current try's save commit only if no event of its job came after the
        try read the job's flow; otherwise the try is run again (a ``ConcurrencyConflict``)
        on the newer flow. For a decision that every later event must find (a WAIT
        started: an event committed meanwhile was handled on a read without it)."""
        read = _flow_read.get()
        if read is None:
            raise RuntimeError("keep_unmoved: only a command about a job has its flow in hand")
        read.asked = True

    def deliver_with(self, relay: LocalRelay) -> None:
        """From now on, saves write the rows no route of ``relay`` wants delivered, and
        the rows it has room for claimed by it, handing them over after commit. Set once
        the routes exist: saves before (and by tools) leave every row to a claim."""
        self._recorder.relay = relay

    def sharing(self, run: Callable[[T], R]) -> Callable[[T], R]:
        """``run`` for another thread (a step's action, which the try waits for): it finds
        what the current try has in hand there too, not reading the log again for it,
        but reads anything else on connections of its own (the try's transaction stays
        the try's). The map of aggregates is copied; the aggregates are the try's."""
        in_hand = _in_hand.get()

        def shared(argument: T) -> R:
            token = _in_hand.set(dict(in_hand) if in_hand is not None else None)
            try:
                return run(argument)
            finally:
                _in_hand.reset(token)

        return shared

    def find(self, kind: type[A], aggregate_id: UUID | str) -> A | None:
        try:
            return self.load(kind, aggregate_id)
        except NotFound:
            return None

    def write(self, aggregates: Sequence[HodeiAggregate | None], meta: Meta) -> None:
        """Saves what changed. Nothing changed, nothing written: a handler's outbox row
        (``meta.ack``: a handler gives it to its last command) is then acknowledged in
        the transaction of the command's reads, or else in the relay's next bulk
        acknowledgement, never in a transaction of its own."""
        if any(aggregate is not None and aggregate.pending_events for aggregate in aggregates):
            read = _flow_read.get()
            self.save(*aggregates, **meta.kwargs(), unmoved=read if read is not None and read.asked else None)
        elif meta.ack is not None:
            self._recorder.acknowledge_with_reads(meta.ack)

    def command(self, meta: Meta, run: Callable[[], tuple[R, Sequence[HodeiAggregate | None]]], attempts: int = 8) -> R:
        """Runs ``run`` (load, decide, return aggregates to save) and saves, retrying on
        concurrent writes: each retry reloads, so the command sees the winner's state.

        Within one try, an aggregate is read from the log once: loading it again (a saga's
        next step reads the job the step before changed) gives the same object, so the
        later reader sees the earlier change, and the save's version check still guards
        against every other writer. A command about a job (``meta.correlation_id``) starts
        each try with the job's flow in hand — the job and those of its workers and sagas
        that have not ended, read in one statement — instead of a read per aggregate as its
        steps ask for them; a try that lost the race reads it again. A try's reads and its
        write are one transaction (``hodei.store.db.command_transaction``). The last try's
        conflict, when every try lost, says so: what the caller may do is send it again."""
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(ConcurrencyConflict),
                stop=stop_after_attempt(attempts),
                wait=wait_random(0.001, 0.02),
                reraise=True,
            ):
                with attempt, command_transaction(self.pool):
                    flow, read = self._flow(meta.correlation_id) if meta.correlation_id else ({}, None)
                    token, read_token = _in_hand.set(flow), _flow_read.set(read)
                    try:
                        result, changed = run()
                        self.write(changed, meta)
                    finally:
                        _in_hand.reset(token)
                        _flow_read.reset(read_token)
        except ConcurrencyConflict as exc:
            raise ConcurrencyConflict(
                f"other writers changed it first at each of {attempts} tries, and each was undone: "
                f"try again (the last: {exc.message})"
            ) from exc
        return result

    @property
    def _recorder(self) -> DomainEventRecorder:
        # The Application types it as the library's recorder; ours is the only one.
        assert isinstance(self.recorder, DomainEventRecorder)
        return self.recorder
