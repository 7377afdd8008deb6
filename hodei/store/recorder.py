"""The event recorder: ``domain_events`` is the eventsourcing library's event store.

``DomainEventRecorder`` implements the library's ``ApplicationRecorder`` interface
(selected by ``HodeiStore.construct_recorder``), so aggregates are loaded and saved by
the library's repository and event store, while the rows land in the seed's table.

One ``insert_events`` call is one transaction that
1. updates the read models through ``hodei.store.projections`` (but the saga audit rows,
   which go in with the events, in step 4's statement),
2. takes its turn on ``domain_events`` (an advisory lock: positions then follow commit
   order),
3. acknowledges the outbox row being handled, when the save is a handler's (``ack=``;
   a ``LeaseLost`` when its relay no longer holds it),
4. when the save asks (``unmoved=``), makes sure that no event of the job's flow was
   committed since the command read it (else a ``ConcurrencyConflict``: the command
   runs again, with the newer flow), and appends the events (a duplicate aggregate
   version is a ``ConcurrencyConflict``; so is a read-model row created twice, which
   step 1 may meet first),
5. adds one ``outbox_events`` row per event (a saga's events of the transaction share
   one): written delivered when no relay route wants it (or the command did what the
   route would: ``Meta.done``), claimed by this process's relay
   when it has room and nothing of the aggregate waits before it (``LocalRelay``), and
6. sends a NOTIFY so relays and waiting streams wake up (3-6 are one statement); relays
   sleep through it when no row was left for a claim, and none is sent when, besides,
   no waiter keys on what changed (``heard``): every listening server's backend reads
   each NOTIFY in a transaction of its own.

The lock comes last: it serialises every writer, so it is held only for the append and
the commit, not while the read models are updated. Writers that lock read-model rows in
opposite orders may deadlock before it; PostgreSQL then aborts one, and its transaction
is simply run again (nothing of it was committed).

Event payloads are plain JSON: the library's timestamp wrapper becomes ``occurred_at``
and comes back when events are read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    ApplicationRecorder,
    DatetimeAsISO,
    Notification,
    ProgrammingError,
    StoredEvent,
    Subscription,
)
from psycopg import errors as psycopg_errors
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from hodei.domain.base import uuid_or_none
from hodei.errors import ConcurrencyConflict, LeaseLost
from hodei.store import projections
from hodei.store.db import command_connection, connection, roll_back, translate_errors
from hodei.store.events import MOVES_TOPICS, EventRecord, event_id, pack, runs, split_topic
from hodei.store.sql import query

SIGNAL_CHANNEL = "hodei_signals"
LEASE_LOST = "lease lost"
# NOTIFY payloads must stay under 8000 bytes; past this many ids, wake everyone.
_MAX_SIGNALLED_IDS = 100
WAKE_ALL = "*"
# In a NOTIFY payload: no row of the commit waits for a claim (each was written delivered
# or taken by the writer's relay), so relays need not wake. Payloads without it (an
# older server's) wake them.
NOTHING_TO_DELIVER = "-"
# What no waiter wakes for (hodei.signals): a worker's stream waits for its dispatch, its
# job's changes and its end, watchers and log followers for their job, and nobody keys on
# a saga. A worker's creation, its resource and its registration change nothing a waiter
# reads (its stream opens after the registration, and reads its state then); nobody can
# be waiting yet for a job being created (its id is new).
_UNHEARD = frozenset(
    {
        ("Worker", "WorkerCreated"),
        ("Worker", "WorkerResourceCreated"),
        ("Worker", "WorkerRegistered"),
        ("Job", "JobCreated"),
    }
)


FLOW_MOVED = "flow moved"


@dataclass
class Unmoved:
    """A command's read of its job's flow: the last position it saw (of the job's events
    and of every event of the flow's aggregates) and those aggregates. Asked for
    (``asked``), the save commits only if nothing of the flow came after."""

    job: str
    seen: int
    aggregates: list[str]
    asked: bool = False


class Ack:
    """Marks an outbox row handled in the same transaction as the handler's events."""

    def __init__(self, outbox_id: UUID, claimed_by: str) -> None:
        self.outbox_id = outbox_id
        self.claimed_by = claimed_by
        self.done = False


@dataclass(frozen=True)
class Reservation:
    """Room a relay made for the rows a save is about to write (``LocalRelay.reserve``)."""

    rows: int
    # Rows the relay holds (claimed, not yet acknowledged): a new row may be taken behind
    # them, not behind any other open row of its aggregate.
    held: list[UUID]
    claimer: str
    lease_seconds: float


class LocalRelay(Protocol):
    """The outbox relay of this process (``hodei.relay.Relay``), as saves see it: rows no
    route wants are written delivered; rows it has room for are written claimed by it and
    handed over after commit, so no claim has to find them."""

    def needs_delivery(self, event: EventRecord) -> bool: ...

    def written_delivered(self, events: Sequence[EventRecord]) -> None: ...

    def reserve(self, rows: int, aggregates: Iterable[str]) -> Reservation | None: ...

    def take(self, reservation: Reservation, rows: Sequence[tuple[list[EventRecord], int]]) -> None: ...


def _payload(stored: StoredEvent) -> tuple[datetime, dict[str, Any]]:
    state = orjson.loads(stored.state)
    stamp = state.pop("timestamp")
    occurred_at = datetime.fromisoformat(stamp["_data_"])
    _check_plain_json(stored.topic, state)
    return occurred_at, state


def _check_plain_json(topic: str, value: object) -> None:
    """Refuses library type wrappers in payloads: SQL must be able to read every field."""
    if isinstance(value, dict):
        if "_type_" in value:
            raise ProgrammingError(f"event {topic} has a non-JSON attribute ({value['_type_']}); use str")
        for item in value.values():
            _check_plain_json(topic, item)
    elif isinstance(value, list):
        for item in value:
            _check_plain_json(topic, item)


# How the library's transcoder wraps an event's timestamp in its stored state.
_TIMESTAMP = DatetimeAsISO.name


def _state(payload: str, stamp: str) -> bytes:
    """The library's stored state of a row's own event: the payload (JSON text) with the
    timestamp (ISO text) put back. Spliced as text: reading the log must not parse every
    payload twice."""
    head = f'{{"timestamp": {{"_type_": "{_TIMESTAMP}", "_data_": "{stamp}"}}'
    rest = payload.strip()[1:]
    return (head + ("" if rest.lstrip().startswith("}") else ", ") + rest).encode()


def _moved_state(payload: dict[str, Any], stamp: str) -> bytes:
    """The library's stored state of an event in a row of moves, whose payload the row's
    parse has made a dict already: dumped once with the timestamp put back, the pack's ISO
    text as it is (dumped to text and spliced, its time parsed and formatted again, it cost
    5.5 us an event; this 1.4)."""
    return orjson.dumps({"timestamp": {"_type_": _TIMESTAMP, "_data_": stamp}, **payload})


@dataclass(frozen=True)
class StoredRow:
    """A row of ``domain_events`` as the library's side reads it; its events are worked
    out only when asked for (``stored``)."""

    aggregate_id: str
    version: int
    topic: str
    payload: str
    occurred_at: datetime

    def stored(self) -> list[StoredEvent]:
        aggregate = UUID(self.aggregate_id)
        return [
            StoredEvent(originator_id=aggregate, originator_version=v, topic=t, state=state)
            for v, t, state in _states(self.version, self.topic, self.payload, self.occurred_at)
        ]


def _states(version: int, topic: str, payload: str, occurred_at: datetime) -> list[tuple[int, str, bytes]]:
    """(version, topic, the library's stored state) of each event a row holds: one, or
    those of a ``pack``, in order."""
    if topic not in MOVES_TOPICS:
        return [(version, topic, _state(payload, occurred_at.isoformat()))]
    moves = orjson.loads(payload)["events"]
    return [(version + n, m["topic"], _moved_state(m["payload"], m["occurred_at"])) for n, m in enumerate(moves)]


def to_record(stored: StoredEvent, correlation_id: str | None, actor: str | None) -> EventRecord:
    """A job's own events are correlated with the job when the save names no correlation
    (several jobs saved at once, as admission does)."""
    aggregate_type, event_type = split_topic(stored.topic)
    occurred_at, payload = _payload(stored)
    aggregate_id = str(stored.originator_id)
    if correlation_id is None and aggregate_type == "Job":
        correlation_id = aggregate_id
    return EventRecord(
        id=event_id(aggregate_id, stored.originator_version),
        occurred_at=occurred_at,
        event_type=event_type,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        aggregate_version=stored.originator_version,
        correlation_id=correlation_id,
        actor=actor,
        payload=payload,
        topic=stored.topic,
    )


def _unmoved_params(unmoved: Unmoved | None) -> dict[str, Any]:
    """``insert_events_and_outbox``'s check of a flow read (none: ``flow`` NULL)."""
    if unmoved is None:
        return {"flow": None, "seen": None, "flow_aggregates": None, "moved": None}
    message = f"{FLOW_MOVED}: an event of job {unmoved.job} came after position {unmoved.seen}, read by this command"
    return {"flow": unmoved.job, "seen": unmoved.seen, "flow_aggregates": unmoved.aggregates, "moved": message}


def signal_payload(records: Sequence[EventRecord]) -> str:
    """The NOTIFY payload: the aggregates' ids, and ``by:<actor>`` when one actor wrote it
    all (a worker's stream sleeps through its own writes: ``hodei.signals``);
    ``insert_events_and_outbox`` adds ``NOTHING_TO_DELIVER``."""
    ids = list(dict.fromkeys(r.aggregate_id for r in records))
    if len(ids) > _MAX_SIGNALLED_IDS:
        return WAKE_ALL
    actors = {r.actor for r in records}
    actor = actors.pop() if len(actors) == 1 else None
    return " ".join([*ids, by(actor)] if actor and not any(c.isspace() for c in actor) else ids)


def heard(records: Sequence[EventRecord]) -> bool:
    """Whether a waiter may key on what ``records`` change (else only a row left for a
    relay's claim is worth a NOTIFY)."""
    return any(
        record.aggregate_type != "Saga" and (record.aggregate_type, record.event_type) not in _UNHEARD
        for record in records
    )


def by(actor: str) -> str:
    """The signal key naming the one actor of a commit."""
    return f"by:{actor}"


@dataclass(frozen=True, order=True)
class _Written:
    """An outbox row just written: its position, whether this process's relay took it,
    and its origin (``sql/007_relay_order.sql``)."""

    position: int
    taken: bool
    origin: int


class DomainEventRecorder(ApplicationRecorder):
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        # Without one (tools, tests), every row is left for a relay's claim.
        self.relay: LocalRelay | None = None

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ack: Ack | None = kwargs.get("ack")
        unmoved: Unmoved | None = kwargs.get("unmoved")
        records = [to_record(e, kwargs.get("correlation_id"), kwargs.get("actor")) for e in stored_events]
        if not records:  # a handler's save with nothing to write acknowledges with its reads
            return []
        lease_lost = f"{LEASE_LOST}: outbox row {ack.outbox_id} is no longer claimed by {ack.claimed_by}" if ack else ""
        relay = self.relay
        done: Callable[[EventRecord], bool] | None = kwargs.get("done")

        def wants(event: EventRecord) -> bool:
            """Whether a row routed by ``event`` is to be delivered: it has a handler to run
            (any, without this process's relay to ask), and its writer did not do that
            handler's work in this commit (``Meta.done``)."""
            return (relay is None or relay.needs_delivery(event)) and not (done is not None and done(event))

        grouped = runs(records, delivered=lambda event: not wants(event))
        wanted = [wants(run[-1]) for run in grouped]
        reservation = None
        if relay is not None and any(wanted):
            reservation = relay.reserve(sum(wanted), {run[0].aggregate_id for run in grouped})
        take = reservation is not None
        rows = Jsonb([_row(run, not want, take and want) for run, want in zip(grouped, wanted, strict=True)])
        try:
            with translate_errors():
                # A write of its own runs again after a deadlock; a command's, the command
                # (``_write``).
                for attempt in Retrying(
                    retry=retry_if_exception_type(psycopg_errors.DeadlockDetected),
                    stop=stop_after_attempt(5),
                    reraise=True,
                ):
                    with attempt:
                        written = self._write(records, rows, reservation, ack, lease_lost, unmoved)
        except BaseException:
            if relay is not None and reservation is not None:
                relay.take(reservation, [])
            raise
        if ack is not None:
            ack.done = True
        if relay is not None:
            relay.written_delivered([r for run, want in zip(grouped, wanted, strict=True) if not want for r in run])
            if reservation is not None:
                taken = [
                    ([r._replace(position=row.position) for r in run], row.origin)
                    for run, row in zip(grouped, written, strict=True)
                    if row.taken
                ]
                relay.take(reservation, taken)
        # The library wants a position per event: a row's events share its position.
        return [row.position for row, run in zip(written, grouped, strict=True) for _ in run]

    def acknowledge_with_reads(self, ack: Ack) -> None:
        """Acknowledges the row of a handler whose last command wrote nothing, in the
        transaction of that command's reads (it commits with them); outside one, leaves
        it to the relay's bulk acknowledgement."""
        conn = command_connection(self.pool)
        if ack.done or conn is None or conn.info.transaction_status is not TransactionStatus.INTRANS:
            return
        with translate_errors():
            conn.execute(query("ack_outbox_row_with_reads"), (ack.outbox_id, ack.claimed_by))
        ack.done = True

    def _fetch(self, sql: Any, params: Any) -> list[Any]:
        with translate_errors(), connection(self.pool) as conn:
            return conn.execute(sql, params).fetchall()

    def _write(
        self,
        records: Sequence[EventRecord],
        rows: Jsonb,
        reservation: Reservation | None,
        ack: Ack | None,
        lease_lost: str,
        unmoved: Unmoved | None,
    ) -> list[_Written]:
        """The transaction, in one round trip: every statement up to the COMMIT is
        pipelined (psycopg's transaction blocks would sync on entry and exit); a lost
        lease aborts it from inside. Inside a ``command_transaction`` its reads began it."""
        command = command_connection(self.pool)
        with self.pool.connection() if command is None else contextlib.nullcontext(command) as conn:
            inserted = conn.cursor()
            try:
                with conn.pipeline():
                    cur = conn.cursor()
                    if conn.info.transaction_status is TransactionStatus.IDLE:
                        cur.execute("BEGIN")
                    audits = projections.project_but_audits(cur, records)
                    cur.execute(query("lock_domain_events"))
                    params = {
                        "events": rows,
                        "channel": SIGNAL_CHANNEL,
                        "signal": signal_payload(records),
                        "quiet": f" {NOTHING_TO_DELIVER}",
                        "heard": heard(records),
                        "claimer": reservation.claimer if reservation else None,
                        "lease": reservation.lease_seconds if reservation else 0.0,
                        "held": reservation.held if reservation else [],
                        "ack": ack.outbox_id if ack else None,
                        "ack_claimer": ack.claimed_by if ack else None,
                        "lease_lost": lease_lost,
                        "audits": Jsonb(audits),
                        **_unmoved_params(unmoved),
                    }
                    inserted.execute(query("insert_events_and_outbox"), params)
                    cur.execute("COMMIT")
            except BaseException as exc:
                roll_back(conn)
                if isinstance(exc, psycopg_errors.RaiseException) and str(exc.diag.message_primary).startswith(
                    LEASE_LOST
                ):
                    raise LeaseLost(lease_lost) from exc
                if isinstance(exc, psycopg_errors.RaiseException) and str(exc.diag.message_primary).startswith(
                    FLOW_MOVED
                ):
                    raise ConcurrencyConflict(str(exc.diag.message_primary)) from exc
                if isinstance(exc, psycopg_errors.DeadlockDetected) and command is not None:
                    # The rollback took the command's reads with it, and what it held (an
                    # admission's advisory lock): the whole try runs again, not the write.
                    raise ConcurrencyConflict(f"deadlock detected; the command runs again: {exc}") from exc
                raise
            return sorted(_Written(*row) for row in inserted.fetchall())

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        rows = self._fetch(
            query("select_aggregate_events"),
            {"aggregate_id": str(originator_id), "gt": gt, "lte": lte, "desc": desc, "limit": limit},
        )
        events = [
            stored
            for row in rows
            for stored in StoredRow(*row).stored()
            if (gt is None or stored.originator_version > gt) and (lte is None or stored.originator_version <= lte)
        ]
        if desc:  # the rows came newest first, each one's events oldest first
            events.sort(key=lambda e: e.originator_version, reverse=True)
        return events[:limit] if limit is not None else events

    def select_flow(self, correlation_id: str) -> tuple[list[StoredRow], Unmoved]:
        """The rows of every aggregate that has an event correlated with ``correlation_id``
        (a job's flow) and has not ended (a finished saga, a terminated worker), each
        aggregate's oldest first; and what the read saw, for a save that must find the
        flow unmoved."""
        # The job's id as a uuid for the workers' index (None: no worker's job).
        params = {"job": correlation_id, "job_uuid": uuid_or_none(correlation_id)}
        fetched = self._fetch(query("select_flow_events"), params)
        rows = [StoredRow(*row[:5]) for row in fetched]
        seen = max((row[5] for row in fetched), default=0)
        return rows, Unmoved(correlation_id, seen, list(dict.fromkeys(row.aggregate_id for row in rows)))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        low = None if start is None else (start if inclusive_of_start else start + 1)
        with translate_errors(), self.pool.connection() as conn:
            rows = conn.execute(
                query("select_notifications"),
                {"low": low, "stop": stop, "topics": list(topics) or None, "limit": limit},
            ).fetchall()
        return [
            Notification(id=position, originator_id=UUID(aid), originator_version=v, topic=t, state=state)
            for position, aid, version, topic, payload, at in rows
            for v, t, state in _states(version, topic, payload, at)
        ]

    def max_notification_id(self) -> int | None:
        with translate_errors(), self.pool.connection() as conn:
            row = conn.execute(query("max_position")).fetchone()
        return None if row is None else row[0]

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        raise NotImplementedError("Hodei consumes events through the outbox relay (hodei.relay), not subscriptions")


def _retry_at(run: Sequence[EventRecord]) -> datetime | None:
    """A row may ask to be delivered later: a saga step retry carries ``retry_at`` (only
    the last event of a row can need a delivery)."""
    retry_at = run[-1].payload.get("retry_at")
    return datetime.fromisoformat(retry_at) if isinstance(retry_at, str) else None


def _row(run: Sequence[EventRecord], delivered: bool, take: bool) -> dict[str, Any]:
    """A run of events (``hodei.store.events.runs``) as ``insert_events_and_outbox``
    reads it (a jsonb record); ``delivered``: its outbox row is written PUBLISHED;
    ``take``: claimed by this process's relay, if it is due now and nothing of its
    aggregate waits before it."""
    record = pack(run)
    retry_at = _retry_at(run)
    return {
        "id": record.id,
        "occurred_at": record.occurred_at,
        "event_type": record.event_type,
        "aggregate_id": record.aggregate_id,
        "correlation_id": record.correlation_id,
        "actor": record.actor,
        "payload": record.payload,
        "aggregate_type": record.aggregate_type,
        "aggregate_version": record.aggregate_version,
        "topic": record.topic,
        "available_at": retry_at or run[0].occurred_at,
        "delivered": delivered,
        "take": take and retry_at is None,
    }
