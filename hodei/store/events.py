"""The shape of a stored event, shared by the recorder, projections, relay and replay."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from hashlib import sha1
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.utils import resolve_topic

_EVENT_ID_NAMESPACE = UUID("0f7cbe4e-3a55-4f76-9a73-0d3e7f4c1b21").bytes


def event_id(aggregate_id: str, version: int) -> UUID:
    """Stable id of an event: the same aggregate version always gets the same id.
    ``uuid.uuid5``'s own steps, with the namespace's bytes made once: replay derives one
    for every event of a saga's row of moves (a third of the log)."""
    return UUID(bytes=sha1(_EVENT_ID_NAMESPACE + f"{aggregate_id}/{version}".encode()).digest()[:16], version=5)


# The variant's hex digit of a name-based UUID, from the digest's own (RFC 4122: 10xx).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid5_text(namespace: UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` at a third of its cost: the projections send
    the ids they derive (a saga's planned steps, a run step's start) as JSON text, and the
    UUID object is most of uuid5's time (replay derives one for a third of the log's events)."""
    digest = sha1(namespace.bytes + name.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{_VARIANT[digest[16]]}{digest[17:20]}-{digest[20:32]}"


def split_topic(topic: str) -> tuple[str, str]:
    """``hodei.domain.job:Job.JobCreated`` -> (``Job``, ``JobCreated``)."""
    _, _, qualname = topic.partition(":")
    aggregate_type, _, event_type = qualname.rpartition(".")
    return aggregate_type or qualname, event_type


class EventRecord(NamedTuple):
    """One row of ``domain_events``. A named tuple: replay makes one per row and per
    event of a saga's row of moves, at a sixth of a frozen dataclass's cost."""

    id: UUID
    occurred_at: datetime
    event_type: str
    aggregate_id: str
    aggregate_type: str
    aggregate_version: int
    correlation_id: str | None
    actor: str | None
    payload: dict[str, Any]
    topic: str
    position: int = 0


@cache
def _class_version(topic: str) -> int:
    """The current version of a topic's event class (replay asks for every event)."""
    return getattr(resolve_topic(topic), "class_version", 1)


def current(record: EventRecord) -> EventRecord:
    """The record with its payload in the event class's current version: the upcasters
    the library applies when it reads an event, applied for code that reads payloads
    (projections), so old and new rows of one event type project alike."""
    target = _class_version(record.topic)
    version = record.payload.get("class_version", 1)
    if version >= target:
        return record
    cls = resolve_topic(record.topic)
    state = dict(record.payload)
    state.pop("class_version", None)
    while version < target:
        getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1
    state["class_version"] = target
    return record._replace(payload=state)


# An aggregate's events of one transaction stored as one row (``pack``), by aggregate type:
# the row's type and topic. A saga moves through several steps per transaction; a worker's
# registration dispatches its job in the same commit. A row costs its transaction an
# insert and an outbox row (and, wanted, a claim and an acknowledgement), whatever it holds.
# A job's events stay one row each: the seed procedure reads them by type (Step 6.2).
class _Moves(NamedTuple):
    row_type: str
    topic: str
    # Whether its events are packed whatever they want delivered (a saga's), or only
    # while none of them wants a delivery (a worker's).
    any_delivery: bool


_MOVES = {
    "Saga": _Moves("SagaMoved", "hodei.domain.saga:Saga.SagaMoved", any_delivery=True),
    "Worker": _Moves("WorkerMoved", "hodei.domain.worker:Worker.WorkerMoved", any_delivery=False),
}
MOVES_TYPES = frozenset(moves.row_type for moves in _MOVES.values())
MOVES_TOPICS = frozenset(moves.topic for moves in _MOVES.values())


def runs(records: Sequence[EventRecord], delivered: Callable[[EventRecord], bool]) -> list[list[EventRecord]]:
    """The records of one save, as the rows they become: a saga's consecutive events
    together; a worker's consecutive events together while none of them wants a delivery
    (``delivered``: the save writes its row delivered), so such a row is never routed;
    every other event alone. A saga's moves in one transaction are decided together and
    only the last of them can need a delivery (the step it stopped at), so its row is
    routed by its last; each of a job's events, and a worker's that wants one, may drive
    something of its own."""
    grouped: list[list[EventRecord]] = []
    for record in records:
        last = grouped[-1][-1] if grouped else None
        moves = _MOVES.get(record.aggregate_type)
        if (
            last is not None
            and moves is not None
            and last.aggregate_id == record.aggregate_id
            and last.aggregate_version + 1 == record.aggregate_version
            and (moves.any_delivery or (delivered(last) and delivered(record)))
        ):
            grouped[-1].append(record)
        else:
            grouped.append([record])
    return grouped


def pack(run: Sequence[EventRecord]) -> EventRecord:
    """One row for a run of an aggregate's events: the first event's id, version and
    time; the events, each with its own type, topic, time and payload, in the payload."""
    first = run[0]
    if len(run) == 1:
        return first
    moves = [
        {"event_type": r.event_type, "topic": r.topic, "occurred_at": r.occurred_at.isoformat(), "payload": r.payload}
        for r in run
    ]
    packed = _MOVES[first.aggregate_type]
    return first._replace(event_type=packed.row_type, topic=packed.topic, payload={"events": moves})


def unpack(record: EventRecord) -> list[EventRecord]:
    """The events a row holds (one, unless it is a ``pack``), each with the id and
    version it would have had as a row of its own: the first the row's (``pack``), the
    others derived as the recorder derives every event's (``event_id``; replay derives one
    for a third of the log's events, 6 us each)."""
    if record.event_type not in MOVES_TYPES:
        return [record]
    # The constructor with its fields by place (EventRecord's order), not _replace nor
    # keywords: a quarter of _replace's cost, under half of keywords', for a third of the log.
    return [
        EventRecord(
            event_id(record.aggregate_id, record.aggregate_version + offset) if offset else record.id,
            datetime.fromisoformat(move["occurred_at"]),
            move["event_type"],
            record.aggregate_id,
            record.aggregate_type,
            record.aggregate_version + offset,
            record.correlation_id,
            record.actor,
            move["payload"],
            move["topic"],
            record.position,
        )
        for offset, move in enumerate(record.payload["events"])
    ]
