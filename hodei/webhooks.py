"""Webhooks, as admins set them (``webhook set``), and the messages they are sent: one
for each job that ends in a webhook's states with labels its selector matches, and for
each attempt's start where a webhook asks (RUNNING, ``job.started``).

Which jobs ended is read from the log, in its order, by one server at a time
(``enqueue``, each sweep): a message is a row of ``hodei.webhook_deliveries`` holding its
body as the job was when it ended, written with the log's reading moved past it in one
transaction. The webhooks themselves are read from the log as of each job's end, so one
set or changed a moment before a job ends is told of it and one deleted is not. The
serving servers send the rows (``hodei.server.webhook_sender``), each leased for its
attempt, and record each answer here; a message not answered 2xx is tried again after
RETRY_AFTER's pauses, then given up on (FAILED) until someone redelivers it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from hodei.domain.base import check_name, derived_id, uuid_or_none
from hodei.domain.job import JobState
from hodei.domain.webhook import (
    ENDINGS,
    MAX_WEBHOOKS,
    PIPELINE_FINISHED,
    STARTED,
    Webhook,
    check_about,
    check_overlap,
    check_selector,
    check_states,
    check_url,
    origin_of,
    told_of,
    webhook_id,
)
from hodei.domain.workflow import WORKFLOW_LABEL
from hodei.errors import InvalidInput, InvalidTransition, NotFound
from hodei.server.convert import job_to_proto
from hodei.server.workflows import workflow_of
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_transaction, execute, fetch_all, fetch_value
from hodei.store.history import job_at
from hodei.store.job_secrets import JobSecrets, SecretsPurged
from hodei.store.readmodels import JobRow, ReadModels
from hodei.wire import job_dict, workflow_dict

# Seconds before each attempt after the first (Svix's and Stripe's schedules, shortened):
# a receiver down for a deploy gets its messages within minutes, one down for hours
# within the last; then the message is given up on.
RETRY_AFTER = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0)
MAX_ATTEMPTS = len(RETRY_AFTER) + 1
# An attempt's lease: a server that dies while sending leaves the message due again then.
LEASE_SECONDS = 60.0
# Messages delivered or given up on are kept this long (`webhook get` shows the newest).
KEPT_SECONDS = 7 * 86400.0
DELIVERIES_SHOWN = 20
# Events read from the log a transaction.
READ_AT_ONCE = 500
SECRET_PREFIX = "whsec_"
FINISHED = "job.finished"
STARTED_TYPE = "job.started"
TEST = "webhook.test"


@dataclass(frozen=True)
class WebhookRow:
    id: str
    name: str
    origin: str
    sealed: dict[str, str]
    states: list[str]
    label_selector: list[str]
    changed_at: datetime
    changed_by: str | None
    pipelines: bool
    pending: int
    failed: int
    delivered: int


@dataclass(frozen=True)
class Defined:
    """A webhook as its admins see it: its URL opened; until when the secret its last
    rotation replaced signs too (None: it does not)."""

    row: WebhookRow
    url: str
    previous_until: datetime | None = None


@dataclass(frozen=True)
class DeliveryRow:
    id: UUID
    webhook: str
    type: str
    job_id: UUID | None
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    next_at: datetime | None


@dataclass(frozen=True)
class Due:
    """A message claimed for an attempt (``attempts``: this one's number)."""

    id: UUID
    webhook: str
    type: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Target:
    """Where a webhook's messages go, and the secrets that sign each: its own, then the one
    its rotation replaced while that still signs."""

    url: str
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class _Wants:
    """What the log's reading needs of a webhook: which endings and labels it is told of."""

    id: str
    name: str
    states: list[str]
    label_selector: list[str]
    # Told of pipelines that end, instead of jobs (`webhook set --pipelines`).
    pipelines: bool


@dataclass(frozen=True)
class _Event:
    position: int
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    event_type: str
    payload: dict[str, Any]


def new_secret() -> str:
    """A signing secret as the Standard Webhooks specification writes one."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def _previous_until(opened: Mapping[str, str]) -> datetime | None:
    """Until when a webhook's rotated secret signs beside its own; None once it no longer does."""
    until = opened.get("previous_until")
    moment = None if until is None else datetime.fromisoformat(until)
    return moment if moment is not None and moment > datetime.now(UTC) else None


def message(kind: str, data: Mapping[str, Any]) -> str:
    """A message's body: its type, when it was made, and its data."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": kind, "timestamp": stamp, "data": data}, sort_keys=True)


def retry_in(attempts: int) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None: give up."""
    return RETRY_AFTER[attempts - 1] if attempts < MAX_ATTEMPTS else None


class Webhooks:
    def __init__(self, store: HodeiStore, secrets: JobSecrets, reads: ReadModels) -> None:
        self.store = store
        self.secrets = secrets
        self.reads = reads

    # Definitions ----------------------------------------------------------------------

    def set(
        self, name: str, url: str, states: Sequence[str], selector: Sequence[str], actor: str, pipelines: bool = False
    ) -> tuple[Defined, str]:
        """Creates the webhook or sets it anew; its signing secret is answered when it is
        made (created, or set after its deletion), else "" (it keeps the one it has).
        ``pipelines``: told of pipelines that end instead of jobs."""
        check_name(name, "a webhook")
        url, wanted, terms = check_url(url), check_states(states), check_selector(selector)
        check_about(wanted, pipelines)
        existing = len(self._rows(None, counted=False))
        made = ""

        def run() -> tuple[None, list[Webhook]]:
            nonlocal made
            hook = self.store.find(Webhook, webhook_id(name))
            # A live webhook keeps its secret, and its sealed values while its URL is the same
            # (sealed anew they would differ, and an unchanged webhook would write an event).
            opened = None if hook is None or hook.deleted else self._open(name, hook.sealed)
            if opened is None and existing >= MAX_WEBHOOKS:
                raise InvalidTransition(f"there are {MAX_WEBHOOKS} webhooks, the most there may be: delete one first")
            # A new URL keeps the secrets: its own, and one a rotation replaced still signing.
            values = {"secret": new_secret()} if opened is None else dict(opened)
            if hook is not None and opened is not None and opened["url"] == url:
                sealed = hook.sealed
            else:
                sealed = self.secrets.seal(webhook_id(name), {**values, "url": url})
            if hook is None:
                hook = Webhook.create(name, origin_of(url), sealed, wanted, terms, pipelines)
            else:
                hook.change(origin_of(url), sealed, wanted, terms, pipelines)
            made = values["secret"] if opened is None else ""
            return None, [hook]

        self.store.command(Meta(actor=actor), run)
        return self.get(name), made

    def rotate(self, name: str, overlap: float, actor: str) -> tuple[Defined, str]:
        """A new signing secret, answered; the one it replaces signs too for ``overlap``
        seconds (a second signature on each message), so that a receiver can be given the
        new one while messages go on arriving. A previous secret still signing from an
        earlier rotation stops: two sign at most."""
        check_name(name, "a webhook")
        overlap = check_overlap(overlap)
        secret = new_secret()

        def run() -> tuple[None, list[Webhook]]:
            hook = self.store.find(Webhook, webhook_id(name))
            if hook is None or hook.deleted:
                raise NotFound(f"webhook {name[:80]!r} not found (`webhook list` shows them)")
            opened = self._open(name, hook.sealed)
            values = {"url": opened["url"], "secret": secret}
            until = None
            if overlap > 0:
                ends = datetime.now(UTC) + timedelta(seconds=overlap)
                until = ends.isoformat(timespec="seconds").replace("+00:00", "Z")
                values |= {"previous": opened["secret"], "previous_until": until}
            hook.rotate(self.secrets.seal(webhook_id(name), values), until)
            return None, [hook]

        self.store.command(Meta(actor=actor), run)
        return self.get(name), secret

    def delete(self, name: str, actor: str) -> Defined:
        """Shreds its URL and secret (its key): its pending messages can no longer be sent
        and are given up on when next tried."""
        found = self.get(name)

        def run() -> tuple[None, list[Webhook]]:
            hook = self.store.load(Webhook, webhook_id(name))
            hook.delete()
            return None, [hook]

        self.store.command(Meta(actor=actor), run)
        self.secrets.purge(webhook_id(name))
        return found

    def get(self, name: str) -> Defined:
        rows = self._rows(name)
        if not rows:
            raise NotFound(f"webhook {name[:80]!r} not found (`webhook list` shows them)")
        return self._defined(rows[0])

    def all(self) -> list[Defined]:
        return [self._defined(row) for row in self._rows(None)]

    def rows(self) -> list[WebhookRow]:
        """Every webhook with its messages counted, its URL and secret left sealed."""
        return self._rows(None)

    def _rows(self, name: str | None, upto: int | None = None, counted: bool = True) -> list[WebhookRow]:
        params = {"id": None if name is None else str(webhook_id(name)), "upto": upto, "counted": counted}
        return fetch_all(self.store.pool, "webhooks", params, WebhookRow)

    def _defined(self, row: WebhookRow) -> Defined:
        opened = self._open(row.name, row.sealed)
        return Defined(row, opened["url"], _previous_until(opened))

    def _open(self, name: str, sealed: Mapping[str, str]) -> dict[str, str]:
        return self.secrets.open_sealed(webhook_id(name), sealed, f"webhook {name}")

    def target(self, name: str) -> Target | None:
        """Where its messages go and what signs them; None when it was deleted."""
        rows = self._rows(name, counted=False)
        if not rows:
            return None
        try:
            opened = self._open(name, rows[0].sealed)
        except SecretsPurged:
            return None
        previous = (opened["previous"],) if _previous_until(opened) is not None else ()
        return Target(opened["url"], (opened["secret"], *previous))

    # Messages -------------------------------------------------------------------------

    def enqueue(self) -> int:
        """Reads the log on from where it was last read, up to its head (at most
        READ_AT_ONCE events), and writes a message for each job that ended to each
        webhook, as it was then, that is told of it; the messages and the new place in
        the log are one transaction. Another server reading at the same time: nothing."""
        written = 0
        with command_transaction(self.store.pool):
            after = fetch_value(self.store.pool, "lock_webhook_cursor")
            if after is None:
                return 0
            head = fetch_value(self.store.pool, "log_head")
            params = {"after": after, "upto": head, "limit": READ_AT_ONCE}
            events = fetch_all(self.store.pool, "webhook_events", params, _Event)
            hooks = {
                row.name: _Wants(row.id, row.name, row.states, row.label_selector, row.pipelines)
                for row in (self._rows(None, upto=after, counted=False) if events else [])
            }
            for found in events:
                if found.aggregate_type == "Webhook":
                    self._follow(hooks, found)
                    continue
                # Labels are matched once the job is read: only for a state some webhook wants
                # (a pipeline's, once it is read, for any ending of one of its jobs).
                state, ending = found.payload["new_state"], found.payload["new_state"] in ENDINGS
                told = [hook for hook in hooks.values() if state in hook.states or (hook.pipelines and ending)]
                if told:
                    written += self._write(told, found)
            last = events[-1].position if len(events) == READ_AT_ONCE else head
            if last != after:
                execute(self.store.pool, "move_webhook_cursor", (last,))
        return written

    @staticmethod
    def _follow(hooks: dict[str, _Wants], found: _Event) -> None:
        name = found.payload["name"]
        if found.event_type == "WebhookDeleted":
            hooks.pop(name, None)
        else:
            payload = found.payload
            hooks[name] = _Wants(
                found.aggregate_id, name, payload["states"], payload["label_selector"], payload.get("pipelines", False)
            )

    def _write(self, hooks: list[_Wants], changed: _Event) -> int:
        try:
            row = self.reads.job(changed.aggregate_id)
        except NotFound:  # its history deleted since: nothing left to tell
            return 0
        labels = dict(row.spec.get("labels") or {})
        state = changed.payload["new_state"]
        told = [
            hook for hook in hooks if not hook.pipelines and told_of(hook.states, hook.label_selector, state, labels)
        ]
        pipelines = [hook for hook in hooks if hook.pipelines]
        written = (
            self._write_pipeline(pipelines, labels[WORKFLOW_LABEL]) if pipelines and WORKFLOW_LABEL in labels else 0
        )
        return written + self._write_job(told, row, changed, state)

    def _write_pipeline(self, hooks: list[_Wants], workflow_id: str) -> int:
        """A message to each webhook told of pipelines, once the pipeline of a job that ended
        has ended (as the read models say now) in one of its states, with labels (its first
        job's) its selector matches. Its id names the jobs standing in it: the endings of its
        other jobs read later find the same message; once retried, its next end is another."""
        first = uuid_or_none(workflow_id)
        if first is None:  # a label set by hand to no job's id: no pipeline of ours
            return 0
        workflow, _ = workflow_of(self.reads, workflow_id)
        if not JobState(workflow.state).is_terminal:
            return 0
        labels = dict(workflow.jobs[0].job.spec.labels)
        told = [hook for hook in hooks if told_of(hook.states, hook.label_selector, workflow.state, labels)]
        body = message(PIPELINE_FINISHED, workflow_dict(workflow)) if told else ""
        standing = ",".join(sorted(entry.job.id for entry in workflow.jobs))
        for hook in told:
            params = {
                "id": derived_id("webhook-pipeline", hook.id, workflow_id, standing),
                "webhook": hook.name,
                "type": PIPELINE_FINISHED,
                "job_id": first,
                "body": body,
            }
            execute(self.store.pool, "add_webhook_delivery", params)
        return len(told)

    def _write_job(self, told: list[_Wants], row: JobRow, changed: _Event, state: str) -> int:
        """A message about the job to each webhook ``told`` of it."""
        if not told:
            return 0
        kind = STARTED_TYPE if state == STARTED else FINISHED
        try:
            body = message(kind, self._job_then(row, changed))
        except NotFound:  # its history deleted since it was read
            return 0
        for hook in told:
            params = {
                "id": derived_id("webhook-delivery", hook.id, changed.position),
                "webhook": hook.name,
                "type": kind,
                "job_id": row.id,
                "body": body,
            }
            execute(self.store.pool, "add_webhook_delivery", params)
        return len(told)

    def _job_then(self, row: JobRow, changed: _Event) -> dict[str, Any]:
        """The job as it was right after ``changed``, as `job get -o json` prints it. An
        ended job stays as it ended (but for its logs' and artifacts' expiry); at a start
        it is rebuilt from its events up to that one: a short job has ended by the time
        its start is read."""
        phases = self.reads.phases(row.id)
        if changed.payload["new_state"] != STARTED:
            return job_dict(job_to_proto(row, phases))
        then = job_at(self.store.pool, row.id, changed.aggregate_version)
        return job_dict(job_to_proto(then.job, [phase for phase in phases if phase.at <= then.event.occurred_at]))

    def test(self, name: str) -> UUID:
        """A ``webhook.test`` message, due at once; its id."""
        self.get(name)
        delivery = derived_id("webhook-test", name, os.urandom(8).hex())
        body = message(TEST, {"webhook": name})
        params = {"id": delivery, "webhook": name, "type": TEST, "job_id": None, "body": body}
        execute(self.store.pool, "add_webhook_delivery", params)
        return delivery

    def deliveries(self, name: str, limit: int = DELIVERIES_SHOWN) -> list[DeliveryRow]:
        """A webhook's newest messages."""
        params = {"webhook": name, "id": None, "job_id": None, "limit": limit}
        return fetch_all(self.store.pool, "webhook_deliveries", params, DeliveryRow)

    def about_job(self, job_id: UUID) -> list[DeliveryRow]:
        """The messages about a job, to every webhook told of it, newest first."""
        params = {"webhook": None, "id": None, "job_id": job_id, "limit": MAX_WEBHOOKS}
        return fetch_all(self.store.pool, "webhook_deliveries", params, DeliveryRow)

    def delivery(self, delivery_id: str | UUID) -> DeliveryRow:
        try:
            wanted = delivery_id if isinstance(delivery_id, UUID) else UUID(delivery_id)
        except ValueError:
            shown = f"{delivery_id!r}"[:80]
            raise InvalidInput(f"a message's id is a UUID (`webhook get NAME` lists them), got {shown}") from None
        params = {"webhook": None, "id": wanted, "job_id": None, "limit": 1}
        found = fetch_all(self.store.pool, "webhook_deliveries", params, DeliveryRow)
        if not found:
            raise NotFound(f"no webhook message {wanted} (messages are kept {KEPT_SECONDS / 86400:g} days)")
        return found[0]

    def redeliver(self, delivery_id: str) -> DeliveryRow:
        found = self.delivery(delivery_id)
        if self.target(found.webhook) is None:
            raise InvalidTransition(f"webhook {found.webhook} was deleted: its messages cannot be sent")
        execute(self.store.pool, "redeliver_webhook_delivery", (found.id,))
        return self.delivery(found.id)

    def claim(self, limit: int) -> list[Due]:
        params = {"lease": LEASE_SECONDS, "limit": limit}
        return fetch_all(self.store.pool, "claim_webhook_deliveries", params, Due)

    def record(self, due: Due, status: int | None, error: str) -> str:
        """An attempt's outcome: DELIVERED on a 2xx, else PENDING until the attempts run
        out (FAILED). The state it is left in."""
        if status is not None and 200 <= status < 300:
            state, pause = "DELIVERED", 0.0
        else:
            wait = retry_in(due.attempts)
            state, pause = ("FAILED", 0.0) if wait is None else ("PENDING", wait)
        self._outcome(due, state, pause, status, error)
        return state

    def give_up(self, due: Due, why: str) -> None:
        """A message that cannot be sent at all (its webhook deleted)."""
        self._outcome(due, "FAILED", 0.0, None, why)

    def _outcome(self, due: Due, state: str, pause: float, status: int | None, error: str) -> None:
        params = {"id": due.id, "state": state, "retry_in": pause, "status": status, "error": error[:1000] or None}
        execute(self.store.pool, "record_webhook_attempt", params)

    def prune(self) -> int:
        return execute(self.store.pool, "prune_webhook_deliveries", (KEPT_SECONDS,))
