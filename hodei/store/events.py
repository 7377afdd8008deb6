"""The shape of a stored event, shared by the recorder, projections, relay and replay."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.utils import resolve_topic

_EVENT_ID_NAMESPACE = UUID("0f7cbe4e-3a55-4f76-9a73-0d3e7f4c1b21")


def event_id(aggregate_id: str, version: int) -> UUID:
    """Stable id of an event: the same aggregate version always gets the same id."""
    return uuid5(_EVENT_ID_NAMESPACE, f"{aggregate_id}/{version}")


def split_topic(topic: str) -> tuple[str, str]:
    """``hodei.domain.job:Job.JobCreated`` -> (``Job``, ``JobCreated``)."""
    _, _, qualname = topic.partition(":")
    aggregate_type, _, event_type = qualname.rpartition(".")
    return aggregate_type or qualname, event_type


@dataclass(frozen=True)
class EventRecord:
    """One row of ``domain_events``."""

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


def current(record: EventRecord) -> EventRecord:
    """The record with its payload in the event class's current version: the upcasters
    the library applies when it reads an event, applied for code that reads payloads
    (projections), so old and new rows of one event type project alike."""
    target = getattr(resolve_topic(record.topic), "class_version", 1)
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
    return replace(record, payload=state)
