"""What a job asks of its Kubernetes pod. Which nodes it may run on: the node labels it
needs (a pod's ``nodeSelector``) and the node taints it tolerates (its ``tolerations``), as
a Kubernetes user writes them (``kubectl label``, ``kubectl taint``). GPU nodes, spot nodes,
a node pool kept for batch work: a cluster says which node is which by labels and keeps pods
off by taints. And the service account it runs as (``serviceAccountName``): what it may do
in the cluster and, through workload identity, in a cloud — only one the server lets jobs
name (``HODEI_K8S_JOB_SERVICE_ACCOUNTS``), since the account's rights are the cluster
admin's to give, not a submitter's to take.

Only the Kubernetes provider places a worker on a node; a job naming either runs there.
The server may set both for every pod it makes (``HODEI_K8S_NODE_SELECTOR``,
``HODEI_K8S_TOLERATIONS``: the node pool its workers are kept to); a job adds to them and
cannot move its pod off that pool (``merged_selector``).

Names and values are checked by Kubernetes' own rules, so a pod the API server would
refuse is refused at submission instead, by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hodei.domain.base import canonical_terms
from hodei.errors import InvalidInput, excerpt

# A taint's effects, as the API names them. PreferNoSchedule only asks the scheduler to
# avoid a node; the others keep off every pod that does not tolerate them.
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# How many terms a job may give of each (a pod's spec has no limit of its own; these keep
# a job's spec readable).
MOST_TERMS = 32

# Kubernetes' qualified name (a label's or a taint's key): an optional DNS subdomain
# prefix and `/`, then a name of at most 63 characters; and a label's value.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = re.compile(r"^[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?$")
_KEY_NAME = re.compile(rf"^{_NAME}$")
_VALUE = re.compile(rf"^(?:{_NAME})?$")


def key_problem(key: str) -> str | None:
    """What Kubernetes would say is wrong with a label's or a taint's key."""
    prefix, slash, name = key.rpartition("/")
    if slash and not _PREFIX.match(prefix):
        return f"key `{excerpt(key)}`: its prefix must be a DNS subdomain (lowercase letters, digits, `-`, `.`)"
    if not _KEY_NAME.match(name):
        return (
            f"key `{excerpt(key)}` must be at most 63 letters, digits, `-`, `_` or `.` (after an optional "
            "`prefix/`), beginning and ending with a letter or digit"
        )
    return None


def value_problem(value: str) -> str | None:
    """What Kubernetes would say is wrong with a label's or a taint's value."""
    if not _VALUE.match(value):
        return (
            f"value `{excerpt(value)}` must be empty or at most 63 letters, digits, `-`, `_` or `.`, "
            "beginning and ending with a letter or digit"
        )
    return None


def selector_problems(selector: Mapping[str, str]) -> list[str]:
    """Every term of a node selector Kubernetes would refuse, and too many terms."""
    if len(selector) > MOST_TERMS:
        return [f"{len(selector)} node selector terms; the limit is {MOST_TERMS}"]
    return [
        f"node selector {problem}"
        for key, value in selector.items()
        for problem in (key_problem(key), value_problem(value))
        if problem
    ]


def selector_of(texts: Iterable[str], where: str) -> dict[str, str]:
    """A node selector as written: ``KEY=VALUE`` terms, several to a text when separated
    by commas (``disktype=ssd,zone=a``: a label's value holds no comma). ``where`` names
    the flag or setting in an error. Refuses what Kubernetes would."""
    selector: dict[str, str] = {}
    for text in texts:
        for term in text.split(","):
            key, equals, value = term.strip().partition("=")
            if not equals or not key.strip():
                raise InvalidInput(f"malformed {where} term `{excerpt(term.strip())}`: expected KEY=VALUE")
            key, value = key.strip(), value.strip()
            if selector.setdefault(key, value) != value:
                raise InvalidInput(f"{where}: {key} is given twice, as {selector[key]} and as {value}")
    found = selector_problems(selector)
    if found:
        raise InvalidInput(f"{where}: {'; '.join(found)}")
    return selector


@dataclass(frozen=True)
class Toleration:
    """A taint a pod tolerates, written as ``kubectl taint`` writes taints:
    ``KEY=VALUE:EFFECT`` (that value), ``KEY:EFFECT`` (any value: the Exists operator),
    and either without ``:EFFECT`` for every effect."""

    key: str
    # None: any value (Exists).
    value: str | None = None
    # "": every effect.
    effect: str = ""

    @classmethod
    def parse(cls, text: str) -> Toleration:
        rest, colon, effect = text.strip().rpartition(":")
        if not colon:
            rest, effect = effect, ""
        key, equals, value = rest.partition("=")
        toleration = cls(key.strip(), value.strip() if equals else None, effect.strip())
        problems = toleration.problems()
        if problems:
            raise InvalidInput(f"toleration `{excerpt(text)}`: {'; '.join(problems)} (KEY[=VALUE][:EFFECT])")
        return toleration

    def problems(self) -> list[str]:
        found = []
        if not self.key:
            found.append("a key is needed (a toleration of every taint is the server's to give)")
        elif problem := key_problem(self.key):
            found.append(problem)
        if self.value is not None and (problem := value_problem(self.value)):
            found.append(problem)
        if self.effect and self.effect not in EFFECTS:
            found.append(f"effect must be one of {', '.join(EFFECTS)}, got `{excerpt(self.effect)}`")
        return found

    def __str__(self) -> str:
        value = "" if self.value is None else f"={self.value}"
        return f"{self.key}{value}{f':{self.effect}' if self.effect else ''}"

    def to_kubernetes(self) -> dict[str, Any]:
        """As a pod's spec holds it."""
        found: dict[str, Any] = {"key": self.key}
        if self.value is None:
            found["operator"] = "Exists"
        else:
            found.update(operator="Equal", value=self.value)
        if self.effect:
            found["effect"] = self.effect
        return found


def tolerations_of(texts: Iterable[str]) -> tuple[Toleration, ...]:
    """Tolerations as written (``--toleration``, HODEI_K8S_TOLERATIONS); refuses a bad one
    by name, and too many."""
    parsed = tuple(Toleration.parse(text) for text in texts)
    if len(parsed) > MOST_TERMS:
        raise InvalidInput(f"{len(parsed)} tolerations; the limit is {MOST_TERMS}")
    return parsed


# A service account's name: a DNS subdomain (RFC 1123), as the API checks it.
_SERVICE_ACCOUNT = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")


def service_account_problems(name: str) -> list[str]:
    """What Kubernetes would say is wrong with a service account's name ("": none asked)."""
    if not name or (len(name) <= 253 and _SERVICE_ACCOUNT.match(name)):
        return []
    return [
        f"service account `{excerpt(name)}` must be a Kubernetes name: at most 253 lowercase letters, digits, "
        "`-` and `.`, beginning and ending with a letter or digit"
    ]


def check_service_account(name: str, allowed: Iterable[str]) -> None:
    """Refuses a service account the server does not let jobs name."""
    allowed = sorted(allowed)
    if name and name not in allowed:
        those = f"only {', '.join(allowed)}" if allowed else "none"
        raise InvalidInput(
            f"service account `{excerpt(name)}` is not one this server lets jobs run as "
            f"(HODEI_K8S_JOB_SERVICE_ACCOUNTS: {those})"
        )


def toleration_problems(texts: Iterable[str]) -> list[str]:
    try:
        tolerations_of(texts)
    except InvalidInput as exc:
        return [exc.message]
    return []


def canonical_tolerations(texts: Iterable[str]) -> tuple[str, ...]:
    """Tolerations in the one form a spec keeps (``dedicated = gpu : NoSchedule`` is
    ``dedicated=gpu:NoSchedule``)."""
    return canonical_terms(texts, Toleration.parse)


def merged_selector(server: Mapping[str, str], job: Mapping[str, str]) -> dict[str, str]:
    """The pod's node selector: the server's terms (HODEI_K8S_NODE_SELECTOR) and the
    job's. A job cannot take its pod off the server's nodes: a key the server sets to
    another value is refused."""
    for key, value in job.items():
        if key in server and server[key] != value:
            raise InvalidInput(
                f"node selector {key}={value} conflicts with this server's {key}={server[key]} "
                "(HODEI_K8S_NODE_SELECTOR: its pods run only on such nodes)"
            )
    return {**server, **job}
