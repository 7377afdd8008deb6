"""Who changed the platform's configuration, and how (``audit``): each change to a
provider, a pool, a submitter limit, a webhook or a cron job, read from the event log
with the name of whoever made it, newest first. Jobs have theirs (``job events``), tokens
theirs (``token list``).

A change is said in words from its event's payload; what the payload seals (a webhook's
URL, a cron job's secrets) never is, and a cron job's spec is left to ``cron get``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from hodei.domain.provider import ResourceLimits
from hodei.errors import InvalidInput
from hodei.store.db import fetch_all

# What people call each kind, and its aggregate's type in the log.
KINDS = {"provider": "Provider", "pool": "Pool", "limit": "SubmitterLimit", "webhook": "Webhook", "cron": "CronJob"}
MAX_CHANGES = 1000


@dataclass(frozen=True)
class Change:
    at: datetime
    actor: str
    kind: str
    subject: str
    event_type: str
    change: str


@dataclass(frozen=True)
class _Row:
    at: datetime
    actor: str
    aggregate_type: str
    event_type: str
    payload: dict[str, Any]
    subject: str


def _bound(payload: Mapping[str, Any], name: str, shown: str) -> str:
    if name in payload.get("inherits", []):
        return f"{shown} as *'s"
    value = payload.get(name)
    return f"{shown} {'none' if value is None else value}"


def _webhook(payload: Mapping[str, Any]) -> str:
    selector = " ".join(payload["label_selector"]) or "every job"
    about = ", pipelines" if payload.get("pipelines") else ""
    return f"{payload['origin']}{about}, on {','.join(payload['states'])}, labels {selector}"


def _cron(payload: Mapping[str, Any]) -> str:
    definition = payload["definition"]
    jobs = 1 + len(definition.get("more_specs", ()))
    return f"schedule '{definition['schedule']}' ({definition['time_zone']}), owner {payload['owner']}" + (
        f", {jobs} jobs a run" if jobs > 1 else ""
    )


# The changes whose words need nothing of their payload.
_FIXED = {
    "ProviderRegistered": "registered",
    "ProviderEnabled": "enabled",
    "ProviderDisabled": "disabled: new jobs refused, its queue waits",
    "PoolDeleted": "deleted: its queued jobs wait",
    "SubmitterLimitDeleted": "deleted: under *'s limits",
    "WebhookDeleted": "deleted: its URL and secret shredded",
    "CronJobPaused": "paused",
    "CronJobResumed": "resumed",
    "CronJobDeleted": "deleted",
}


def said(event_type: str, p: Mapping[str, Any]) -> str:
    """A change in words, from its event's payload; an event type this version does not
    know, by its name."""
    limits = f"{_bound(p, 'jobs', 'jobs at once')}, {_bound(p, 'submitted', 'not ended')}"
    match event_type:
        case "ProviderCapacityChanged":
            workers = p.get("max_workers")
            return f"capacity {workers} workers" if workers else "capacity back to each server's HODEI_*_MAX_WORKERS"
        case "ProviderResourcesChanged":
            limits = ResourceLimits(p.get("max_cpu_cores"), p.get("max_memory_bytes")).text()
            return f"resources for its jobs at once: {limits or 'no limit'}"
        case "ProviderHealthChanged":
            return f"health {p['health']}" + (f": {p['message']}" if p.get("message") else "")
        case "PoolCreated":
            return f"created, size {p['size']}"
        case "PoolResized":
            return f"size {p['size']}"
        case "SubmitterLimitSet":
            return f"set: {limits}"
        case "SubmitterLimitChanged":
            return limits
        case "WebhookSet":
            return f"created: {_webhook(p)}"
        case "WebhookChanged":
            return f"set: {_webhook(p)}"
        case "WebhookSecretRotated":
            until = p.get("previous_until")
            return "signing secret rotated: " + (
                f"the old one signs too until {until}" if until else "the old one stopped"
            )
        case "CronJobCreated":
            return f"created: {_cron(p)}"
        case "CronJobRedefined":
            return f"redefined: {_cron(p)}"
    return _FIXED.get(event_type, event_type)


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """The aggregate types of the kinds asked for (any case); none: every kind."""
    kinds = [kind.lower() for kind in kinds]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InvalidInput(f"unknown kind {', '.join(unknown)}: the kinds are {', '.join(KINDS)}")
    return [KINDS[kind] for kind in kinds or KINDS]


def check_limit(limit: int) -> int:
    """How many changes to list (0: 100)."""
    if not 0 <= limit <= MAX_CHANGES:
        raise InvalidInput(f"limit is 1 to {MAX_CHANGES} (0: 100), got {limit}")
    return limit or 100


class Audit:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def changes(
        self, kinds: Sequence[str], actor: str, since: datetime | None, with_system: bool, limit: int
    ) -> list[Change]:
        """Newest first; ``actor`` "": anyone's; ``with_system``: the platform's own too
        (providers' health, as probes find it)."""
        params = {
            "types": check_kinds(kinds),
            "actor": actor or None,
            "system": with_system,
            "since": since,
            "limit": check_limit(limit),
        }
        kind_of = {aggregate_type: kind for kind, aggregate_type in KINDS.items()}
        rows = fetch_all(self.pool, "configuration_changes", params, _Row)
        return [
            Change(
                at=row.at,
                actor=row.actor,
                kind=kind_of[row.aggregate_type],
                subject=row.subject,
                event_type=row.event_type,
                change=said(row.event_type, row.payload),
            )
            for row in rows
        ]
