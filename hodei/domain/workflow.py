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
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Member:
    """A job of a pipeline, as its view needs it: which job it is a copy of (``job retry``)
    and the jobs it starts after, by id."""

    id: str
    retry_of: str | None
    after: Sequence[str]


@dataclass(frozen=True)
class Standing:
    """A job that stands for its place in a pipeline: the newest of the copies of a job as
    submitted (or that job, never retried)."""

    id: str
    # 1 for a job that starts after no job of the pipeline, else one more than the highest
    # stage of those it starts after (Argo's and GitLab's columns).
    stage: int
    # The jobs it is a copy of, oldest first.
    copy_of: tuple[str, ...]


def standing(members: Sequence[Member]) -> list[Standing]:
    """The jobs standing in a pipeline whose ``members`` are given as submitted (oldest
    first), in an order that runs: by stage, then as their places were submitted. A job
    retried stands by its newest copy, which carries the pipeline's label; what a copy
    starts after, a job since retried, is that job's place."""
    known = {member.id: member for member in members}

    def place_of(job_id: str) -> str:
        """The job as submitted whose place ``job_id`` holds (itself, or the job it copies)."""
        return (*_copied(known, known[job_id]), job_id)[0]

    newest = {place_of(member.id): member for member in members}  # the last given of each place wins
    stages: dict[str, int] = {}
    for place, member in newest.items():  # places as submitted: each starts after earlier ones only
        before = [stages.get(place_of(ref), 0) for ref in member.after if ref in known and place_of(ref) != place]
        stages[place] = 1 + max(before, default=0)
    order = {place: number for number, place in enumerate(newest)}
    return [
        Standing(member.id, stages[place], _copied(known, member))
        for place, member in sorted(newest.items(), key=lambda item: (stages[item[0]], order[item[0]]))
    ]


def _copied(known: Mapping[str, Member], member: Member) -> tuple[str, ...]:
    """The jobs ``member`` is a copy of, oldest first."""
    chain: list[str] = []
    while member.retry_of is not None and member.retry_of in known:
        member = known[member.retry_of]
        chain.append(member.id)
    return tuple(reversed(chain))
