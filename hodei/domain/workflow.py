"""Several jobs submitted together, all or none, some starting after others (``job run
--file`` of several documents; Argo's DAG, GitLab's ``needs``): a build, its tests once it
has succeeded, a deploy once they have, a clean-up however they ended.

A job starts after another of the same submission by naming it where its ``after`` names
a job: the person by the other's name in the file, the request by its place in the request
(``#0`` for the first), since neither has an id before the submission is written. Only a
job before it may be named, so a request is in an order that runs (the CLI orders a file's
jobs so), and no cycle can be written. Each job carries the label ``hodei.io/workflow``
with the first job's id, as an array's carry its own: ``job list -l hodei.io/workflow=ID``
finds them together, ``job cancel -l`` cancels them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from uuid import UUID

from hodei.domain.spec import JobSpec
from hodei.errors import InvalidInput

WORKFLOW_LABEL = "hodei.io/workflow"
# The most jobs one submission of several holds (an array's most is its own).
MOST_JOBS = 100
_SIBLING = "#"


def sibling(place: int) -> str:
    """How a request names its job at ``place`` (0 for the first) in an ``after``."""
    return f"{_SIBLING}{place}"


def resolved(spec: JobSpec, place: int, ids: Sequence[UUID]) -> tuple[JobSpec, dict[str, str]]:
    """The spec of the request's job at ``place`` without the jobs of the request it
    starts after, and those, by id (their ``after`` conditions); refused when it names one
    not before it."""
    siblings: dict[str, str] = {}
    others: dict[str, str] = {}
    for ref, condition in spec.after.items():
        if not ref.startswith(_SIBLING):
            others[ref] = condition
            continue
        number = ref[len(_SIBLING) :]
        if not number.isdigit() or int(number) >= place:
            raise InvalidInput(
                f"job {place + 1} of the request starts after `{ref[:16]}`: a job of the same request is named by "
                f"its place before this one's (#0 to #{place - 1})"
                if place
                else f"job 1 of the request starts after `{ref[:16]}`: the first job cannot start after another of it"
            )
        siblings[str(ids[int(number)])] = condition
    return replace(spec, after=others), siblings


def in_workflow(spec: JobSpec, workflow_id: UUID, siblings: Mapping[str, str]) -> JobSpec:
    """The job as it is submitted with the others: their first job's id in its label, and
    the jobs of the request it starts after among its own."""
    return replace(spec, after={**spec.after, **siblings}, labels={**spec.labels, WORKFLOW_LABEL: str(workflow_id)})


def run_order(named: Sequence[tuple[str, Mapping[str, str]]]) -> list[int]:
    """The places of jobs (each its name and its ``after``, which may name others by name)
    in an order that runs: each after those it names, otherwise as given. Refused: a name
    given twice or none, and jobs that start after each other (a cycle)."""
    names = [name for name, _ in named]
    for name in names:
        if not name:
            raise InvalidInput("each job of several needs a name: the others name it in their after")
        if names.count(name) > 1:
            raise InvalidInput(f"two jobs are named {name!r}: the others name a job in their after by its name")
    place_of = {name: place for place, name in enumerate(names)}
    needs = [{place_of[ref] for ref in after if ref in place_of} for _, after in named]
    for place, needed in enumerate(needs):
        if place in needed:
            raise InvalidInput(f"job {names[place]!r} starts after itself")
    order: list[int] = []
    while len(order) < len(named):
        ready = [place for place in range(len(named)) if place not in order and needs[place] <= set(order)]
        if not ready:
            waiting = [names[place] for place in range(len(named)) if place not in order]
            raise InvalidInput(f"the jobs {', '.join(map(repr, waiting))} start after each other: none could start")
        order.append(ready[0])
    return order
