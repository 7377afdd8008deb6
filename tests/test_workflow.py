"""Several jobs submitted together: the order a file's jobs are sent in, how a request
names its own jobs, and which of a pipeline's jobs stand in it, by stage
(hodei.domain.workflow)."""

from __future__ import annotations

import random
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hodei.domain.spec import JobSpec
from hodei.domain.workflow import WORKFLOW_LABEL, Member, Standing, in_workflow, resolved, run_order, sibling, standing
from hodei.errors import InvalidInput


def test_a_files_jobs_go_each_after_those_it_names_otherwise_as_written() -> None:
    named = [
        ("deploy", {"test": "ok"}),
        ("cleanup", {"build": "any", "test": "any"}),
        ("build", {}),
        ("test", {"build": "ok", "0c1f": "ok"}),  # and a job submitted before, by id
    ]
    assert [named[place][0] for place in run_order(named)] == ["build", "test", "deploy", "cleanup"]
    assert run_order([("a", {}), ("b", {})]) == [0, 1]


@pytest.mark.parametrize(
    ("named", "words"),
    [
        ([("a", {}), ("", {})], "each job of several needs a name"),
        ([("a", {}), ("a", {})], "two jobs are named 'a'"),
        ([("a", {"a": "ok"})], "job 'a' starts after itself"),
        ([("a", {"c": "ok"}), ("b", {"a": "ok"}), ("c", {"b": "any"}), ("d", {})], "'a', 'b', 'c' start after each"),
    ],
)
def test_names_missing_or_twice_and_cycles_are_refused(named: list[tuple[str, dict[str, str]]], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        run_order(named)


@given(st.lists(st.lists(st.integers(min_value=0, max_value=30), max_size=4), min_size=1, max_size=30), st.randoms())
def test_any_file_without_a_cycle_runs_in_the_order_found(needs: list[list[int]], shuffle: random.Random) -> None:
    """Jobs naming only jobs before them in some order (no cycle), written in any order:
    each comes after every job it names."""
    names = [f"j{place}" for place in range(len(needs))]
    named = [(names[place], {names[n]: "ok" for n in needed if n < place}) for place, needed in enumerate(needs)]
    shuffle.shuffle(named)
    order = run_order(named)
    assert sorted(order) == list(range(len(named)))
    sent = [named[place][0] for place in order]
    for place, (name, after) in enumerate(named):
        assert all(sent.index(ref) < sent.index(name) for ref in after), (named, order, place)


def test_a_request_names_its_jobs_by_their_places_before_its_own() -> None:
    ids = [uuid4() for _ in range(3)]
    spec = JobSpec(
        name="c", command="x", timeout_seconds=60, after={sibling(0): "ok", sibling(1): "any", "1f2e": "notok"}
    )
    own, siblings = resolved(spec, 2, ids)
    assert own.after == {"1f2e": "notok"} and siblings == {str(ids[0]): "ok", str(ids[1]): "any"}
    submitted = in_workflow(own, ids[0], siblings)
    assert submitted.after == {"1f2e": "notok", str(ids[0]): "ok", str(ids[1]): "any"}
    assert submitted.labels == {WORKFLOW_LABEL: str(ids[0])}
    for place, ref, words in (
        (1, sibling(1), r"#0 to #0"),
        (1, sibling(2), r"#0 to #0"),
        (2, "#-1", "named by its place"),
        (0, sibling(0), "the first job cannot start after another"),
    ):
        with pytest.raises(InvalidInput, match=words):
            resolved(JobSpec(name="x", command="x", timeout_seconds=60, after={ref: "ok"}), place, ids)


# The README's pipeline: build; test after build; deploy after test; report after build;
# cleanup after build and test; and a job submitted before it, outside the pipeline.
PIPELINE = [
    Member("build", None, []),
    Member("test", None, ["build"]),
    Member("deploy", None, ["test", "outside"]),
    Member("report", None, ["build"]),
    Member("cleanup", None, ["build", "test"]),
]


def test_a_pipelines_jobs_stand_by_stage_then_as_submitted() -> None:
    assert standing(PIPELINE) == [
        Standing("build", 1, ()),
        Standing("test", 2, ()),
        Standing("report", 2, ()),
        Standing("deploy", 3, ()),
        Standing("cleanup", 3, ()),
    ]


def test_a_retried_job_stands_by_its_newest_copy_in_its_place() -> None:
    """`job retry --workflow` copies build and test together (test' after build'); test is
    retried again alone later (test'' after build', its place's job); deploy, never retried,
    still names the first test, which its copies now stand for."""
    retried = [
        *PIPELINE,
        Member("build'", "build", []),
        Member("test'", "test", ["build'"]),
        Member("test''", "test'", ["build'"]),
    ]
    assert standing(retried) == [
        Standing("build'", 1, ("build",)),
        Standing("test''", 2, ("test", "test'")),
        Standing("report", 2, ()),
        Standing("deploy", 3, ()),
        Standing("cleanup", 3, ()),
    ]
    # Two copies of the same job (retried twice from the first): the newer stands.
    twice = [*PIPELINE, Member("report'", "report", ["build"]), Member("report''", "report", ["build"])]
    assert [place for place in standing(twice) if place.id.startswith("report")] == [
        Standing("report''", 2, ("report",))
    ]


@given(st.lists(st.lists(st.integers(min_value=0, max_value=30), max_size=4), min_size=1, max_size=30), st.data())
def test_any_pipeline_stands_each_job_after_those_it_starts_after(needs: list[list[int]], data: st.DataObject) -> None:
    """Jobs each naming jobs before it, some retried (a copy after the copies of those it
    names, or their first jobs): one job stands for each place, in stage order, each at a
    stage past every job its place starts after."""
    members = [Member(f"j{place}", None, [f"j{n}" for n in needed if n < place]) for place, needed in enumerate(needs)]
    retried = data.draw(st.lists(st.sampled_from(range(len(needs))), max_size=10))
    newest = {place: f"j{place}" for place in range(len(needs))}
    for copy, place in enumerate(retried):
        after = [newest[int(ref[1:].split("-")[0])] for ref in members[place].after]
        members.append(Member(f"j{place}-{copy}", newest[place], after))
        newest[place] = f"j{place}-{copy}"
    places = standing(members)
    assert sorted(place.id for place in places) == sorted(newest.values())
    stage = {place.id.split("-")[0]: place.stage for place in places}
    assert [place.stage for place in places] == sorted(place.stage for place in places)
    for place, needed in enumerate(needs):
        assert stage[f"j{place}"] == 1 + max((stage[f"j{n}"] for n in needed if n < place), default=0)
