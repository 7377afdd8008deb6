"""A webhook: a URL told of each job that ends, by a signed POST (the Standard Webhooks
format), as GitLab's, Rundeck's or Buildkite's job notifications tell a chat room, a
pager or the next pipeline.

Its URL (Slack's and many others hold their credential in it) and its signing secret
enter its events only sealed, under the webhook's own key (``hodei.store.job_secrets``):
deleting a webhook shreds them. Its events carry the URL's origin (scheme, host, port)
in the clear, for listings and audits. Which jobs it is told of: those ending in one of
its states, whose labels its selector matches (``job list -l``'s terms).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_name, derived_id
from hodei.domain.job import TERMINAL_STATES, JobState
from hodei.domain.spec import LabelSelector
from hodei.errors import InvalidInput, InvalidTransition

# Webhooks at most: each job that ends is matched against every one.
MAX_WEBHOOKS = 100
MAX_URL_LENGTH = 2048
# The endings a webhook may be told of, in the order people read them; and a job's start
# (each attempt's RUNNING), only where asked for (`--on RUNNING`).
ENDINGS = tuple(state.value for state in sorted(TERMINAL_STATES, key=lambda state: state.value))
STARTED = JobState.RUNNING.value
STATES = (STARTED, *ENDINGS)
# The type of a message about a pipeline's end (`webhook set --pipelines`); its job is the
# pipeline's first.
PIPELINE_FINISHED = "pipeline.finished"
# How long a rotated secret may go on signing beside its successor (Stripe's roll allows a
# day; a week covers receivers deployed weekly).
MAX_OVERLAP_SECONDS = 7 * 86400.0


def webhook_id(name: str) -> UUID:
    """A webhook's id, from its name: setting a name twice is one aggregate."""
    return derived_id("webhook", name)


def check_url(url: str) -> str:
    """An http or https URL with a host; its origin (what may be shown) is ``origin_of``."""
    text = url.strip()
    if not text:
        raise InvalidInput("a webhook needs a URL (--url https://host/path)")
    if len(text) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 32 for c in text):
        raise InvalidInput(f"a webhook's URL is at most {MAX_URL_LENGTH} characters, without spaces")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (a port that is no number raises here)
    except ValueError as exc:
        raise InvalidInput(f"a webhook's URL cannot be read: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"a webhook's URL is http:// or https:// with a host, got {origin_of(text)!r}")
    return text


def origin_of(url: str) -> str:
    """What may be shown of a URL: its scheme, host and port (its path, query and user
    may hold a credential)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "?"
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}"


def check_overlap(seconds: float) -> float:
    if not 0 <= seconds <= MAX_OVERLAP_SECONDS:  # NaN fails too
        raise InvalidInput(f"the overlap must be between 0 and {MAX_OVERLAP_SECONDS / 86400:g} days, got {seconds:g} s")
    return seconds


def check_states(states: Iterable[str]) -> tuple[str, ...]:
    """The states a webhook is told of, in STATES' order; none given: every ending (a
    webhook set before starts were told of keeps its endings, as a new one does)."""
    wanted = {state.strip().upper() for state in states if state.strip()}
    unknown = sorted(wanted - set(STATES))
    if unknown:
        told = f"jobs starting ({STARTED}) or ending {', '.join(ENDINGS)}"
        raise InvalidInput(f"a webhook is told of {told}; not of {', '.join(unknown)}")
    return tuple(state for state in STATES if state in wanted) or ENDINGS


def check_selector(terms: Iterable[str]) -> tuple[str, ...]:
    """The label selector's terms as written (each checked as ``job list -l`` checks it)."""
    written = tuple(term.strip() for term in terms if term.strip())
    LabelSelector.of(written)
    return written


def told_of(states: Iterable[str], terms: Iterable[str], state: str, labels: Mapping[str, str]) -> bool:
    """Whether a webhook of these states and selector is told of a job that started or ended so."""
    return state in states and LabelSelector.of(terms).matches(labels)


class Webhook(HodeiAggregate):
    id: UUID  # derived from the name (the library takes an `id` argument when annotated)

    @event("WebhookSet")
    def __init__(
        self,
        name: str,
        origin: str,
        sealed: dict[str, str],
        states: list[str],
        label_selector: list[str],
        pipelines: bool,
    ) -> None:
        self.name = name
        self.origin = origin
        self.sealed = sealed
        self.states = states
        self.label_selector = label_selector
        # Told of pipelines that end (`--pipelines`), instead of jobs.
        self.pipelines = pipelines
        self.deleted = False

    @classmethod
    def create(
        cls,
        name: str,
        origin: str,
        sealed: dict[str, str],
        states: tuple[str, ...],
        label_selector: tuple[str, ...],
        pipelines: bool = False,
    ) -> Webhook:
        check_name(name, "a webhook")
        check_about(states, pipelines)
        # The library accepts `id` because the class annotates it (see `id: UUID` above).
        return cls(  # type: ignore[call-arg]
            id=webhook_id(name),
            name=name,
            origin=origin,
            sealed=sealed,
            states=list(states),
            label_selector=list(label_selector),
            pipelines=pipelines,
        )

    def change(
        self,
        origin: str,
        sealed: dict[str, str],
        states: tuple[str, ...],
        label_selector: tuple[str, ...],
        pipelines: bool = False,
    ) -> None:
        """A new URL, states, selector or subject; a deleted webhook's name set anew
        (``sealed`` then holds a new signing secret, its old key shredded). Nothing changed:
        no event."""
        check_about(states, pipelines)
        unchanged = (origin, sealed, list(states), list(label_selector), pipelines) == (
            self.origin,
            self.sealed,
            self.states,
            self.label_selector,
            self.pipelines,
        )
        if self.deleted or not unchanged:
            self._changed(
                name=self.name,
                origin=origin,
                sealed=sealed,
                states=list(states),
                label_selector=list(label_selector),
                pipelines=pipelines,
            )

    def rotate(self, sealed: dict[str, str], previous_until: str | None) -> None:
        """A new signing secret (``sealed`` holds it, and the one it replaces while that
        still signs: until ``previous_until``, None when it stops at once)."""
        if self.deleted:
            raise InvalidTransition(f"webhook {self.name} was deleted")
        self._rotated(
            name=self.name,
            origin=self.origin,
            sealed=sealed,
            states=self.states,
            label_selector=self.label_selector,
            previous_until=previous_until,
            pipelines=self.pipelines,
        )

    def delete(self) -> None:
        if self.deleted:
            raise InvalidTransition(f"webhook {self.name} was already deleted")
        self._deleted(name=self.name)

    # Each event names its webhook: the webhooks' query reads them by name from the log.
    @event("WebhookChanged")
    def _changed(
        self,
        name: str,
        origin: str,
        sealed: dict[str, str],
        states: list[str],
        label_selector: list[str],
        pipelines: bool,
    ) -> None:
        self.origin = origin
        self.sealed = sealed
        self.states = states
        self.label_selector = label_selector
        self.pipelines = pipelines
        self.deleted = False

    # Its whole definition, as WebhookChanged's: the webhooks' query reads each webhook's
    # latest event. ``previous_until`` is said in the clear for the audit; what signs reads
    # it sealed, beside the secret.
    @event("WebhookSecretRotated")
    def _rotated(
        self,
        name: str,
        origin: str,
        sealed: dict[str, str],
        states: list[str],
        label_selector: list[str],
        previous_until: str | None,
        pipelines: bool,
    ) -> None:
        self.sealed = sealed

    @event("WebhookDeleted")
    def _deleted(self, name: str) -> None:
        self.deleted = True


def check_about(states: Iterable[str], pipelines: bool) -> None:
    """A webhook told of pipelines is told of their endings: a pipeline has no start."""
    if pipelines and STARTED in states:
        raise InvalidInput(f"a webhook told of pipelines is told of how they end, not {STARTED}: leave it out of --on")


# Version 1 of a webhook's definition had no ``pipelines``: it was told of jobs.
def _definition_v1_to_v2(state: dict[str, Any]) -> None:
    state.setdefault("pipelines", False)


for _defined in (Webhook.WebhookSet, Webhook.WebhookChanged, Webhook.WebhookSecretRotated):  # type: ignore[attr-defined]
    _defined.class_version = 2
    _defined.upcast_v1_v2 = staticmethod(_definition_v1_to_v2)
