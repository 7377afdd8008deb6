"""What every Hodei aggregate shares."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, CanMutateAggregate

from hodei.errors import InvalidInput, InvalidTransition

# Namespace for ids derived from other ids (saga per job, worker per job attempt), so a
# repeated command produces the same id and the event store rejects the duplicate.
HODEI_NAMESPACE = UUID("5b1d7a52-8c1e-4c4e-9a55-3f2d0c6f9e10")

_ONE_MICROSECOND = timedelta(microseconds=1)


def derived_id(*parts: object) -> UUID:
    return uuid5(HODEI_NAMESPACE, "/".join(str(p) for p in parts))


# A name people give a thing (a cron job, a pool), which its id is derived from.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


# A caller's name: a token's (``hodei-server token create --name``), a job's submitter.
CALLER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def check_name(name: str, what: str) -> str:
    """``name`` when it is one; ``what``: whose, for the error ("a cron job")."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{what}'s name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit; "
            f"got {name[:80]!r}"
        )
    return name


def check_submitter_name(name: str, alternative: str = "") -> str:
    """``name`` when a token could have it (who submitted a job); ``alternative``: what
    else the caller accepts, for the error."""
    if not CALLER_NAME.match(name):
        raise InvalidInput(
            "a submitter is a token's name (1 to 64 letters, digits, '.', '_', '@' or '-', starting with a "
            f"letter or digit){alternative}; got {name[:80]!r}"
        )
    return name


# What an idempotency key may hold: what AIP-155's UUIDs, Stripe's keys and names such as
# `deploy/42@prod` need, nothing a terminal or a log line would show otherwise.
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:/@+=-]{1,128}")


def check_idempotency_key(key: str) -> str:
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput(
            f"an idempotency key is 1 to 128 letters, digits and ._:/@+=- (a UUID, a deploy's name), got {key[:140]!r}"
        )
    return key


def uuid_or_none(text: str) -> UUID | None:
    """``text`` as a UUID; None when it is not one (a label or an id from outside that no
    row of ours can match)."""
    try:
        return UUID(text)
    except ValueError:
        return None


def canonical_terms(texts: Iterable[str], parse: Callable[[str], object]) -> tuple[str, ...]:
    """Terms a user wrote (tolerations, --retry-on) in the one form a spec keeps: each as
    ``str(parse(text))`` writes it, once; a bad one kept as written, for the spec's
    problems to name (a spec is checked whole, every problem said at once)."""
    kept: list[str] = []
    for text in texts:
        try:
            canonical = str(parse(text))
        except InvalidInput:
            canonical = text
        if canonical not in kept:
            kept.append(canonical)
    return tuple(kept)


class HodeiAggregate(Aggregate):
    """An aggregate whose event timestamps strictly increase.

    Two events triggered in the same microsecond would tie in ``occurred_at``, and
    the seed orders a job's events by ``occurred_at``.
    """

    def trigger_event(self, event_class: type[CanMutateAggregate[UUID]], **kwargs: Any) -> None:
        if kwargs.get("timestamp") is None:
            kwargs["timestamp"] = max(event_class.create_timestamp(), self.modified_on + _ONE_MICROSECOND)
        super().trigger_event(event_class, **kwargs)


def check_transition(kind: str, current: str, target: str, table: Mapping[Any, frozenset[Any]]) -> None:
    if target not in table[current]:
        raise InvalidTransition(f"{kind} cannot go from {current} to {target}")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)
