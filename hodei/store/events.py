"""The shape of a stored event, shared by the recorder, projections, relay and replay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

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
