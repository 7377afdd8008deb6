"""Which failed attempts a job runs again (``--retry-on``, hodei.domain.retries), on the
rule's own and on the Job aggregate that applies it."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hodei.domain.job import Job, JobState
from hodei.domain.retries import MOST_TERMS, RetryTerm, canonical_retry_on, retried, retry_on_problems
from hodei.domain.spec import JobSpec
from hodei.errors import InvalidInput

WORKER = "11111111-1111-1111-1111-111111111111"
PROVIDER = "22222222-2222-2222-2222-222222222222"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def running_job(retries: int, retry_on: tuple[str, ...]) -> Job:
    job = Job.submit(JobSpec(name="t", command="false", timeout_seconds=5, retries=retries, retry_on=retry_on), uuid4())
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    return job


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ([" 075 ", "TIMEOUT", "3-3", "! 2", "128-255"], ("75", "timeout", "3", "!2", "128-255")),
        (["1", "01", "!timeout", "!Timeout"], ("1", "!timeout")),
        (["x", "1"], ("x", "1")),  # a bad term kept as written, for the problems to name
    ],
)
def test_a_rule_is_kept_in_one_form_each_term_once(written: list[str], kept: tuple[str, ...]) -> None:
    assert canonical_retry_on(written) == kept


@pytest.mark.parametrize(
    ("term", "says"),
    [
        ("x", "term `x`: expected an exit code 1-255"),
        ("256", "term `256`: expected"),
        ("-3", "term `-3`: expected"),
        ("1-", "term `1-`: expected"),
        ("1-2-3", "term `1-2-3`: expected"),
        ("٣", "term `٣`: expected"),  # a digit to str.isdigit, not an exit code
        ("0", "exit code 0 is a success, never retried"),
        ("0-5", "exit code 0 is a success"),
        ("9-3", "the range's first code is past its last"),
        ("", "term ``: expected"),
        ("!", "term `!`: expected"),
    ],
)
def test_a_bad_term_is_refused_by_name(term: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says.replace("(", r"\(")):
        RetryTerm.parse(term)
    spec = JobSpec(name="t", command="true", timeout_seconds=5, retries=1, retry_on=(term,))
    with pytest.raises(InvalidInput, match="invalid job: --retry-on term"):
        spec.validate()


def test_a_rule_without_retries_and_too_long_a_rule_are_refused() -> None:
    assert retry_on_problems(("75",), 0) == [
        "--retry-on says which failures are retried, and the job has no retries (--retry N)"
    ]
    assert retry_on_problems((), 0) == [] and retry_on_problems(("75",), 1) == []
    many = tuple(str(code) for code in range(1, MOST_TERMS + 2))
    assert retry_on_problems(many, 1) == [f"--retry-on has {MOST_TERMS + 1} terms; the limit is {MOST_TERMS}"]


@pytest.mark.parametrize(
    ("rule", "exit_code", "timed_out", "again"),
    [
        ((), 1, False, True),
        ((), None, True, True),
        (("75", "timeout"), 75, False, True),
        (("75", "timeout"), 2, False, False),
        (("75", "timeout"), 143, True, True),
        (("75",), 75, True, False),  # a timed-out attempt is a timeout, whatever its code
        (("!2",), 2, False, False),
        (("!2",), 3, False, True),
        (("!2",), None, True, True),
        (("1-125", "!2"), 2, False, False),
        (("1-125", "!2"), 125, False, True),
        (("1-125", "!2"), 126, False, False),
        (("!timeout",), None, True, False),
        (("!timeout",), 1, False, True),
        (("128-255",), 137, False, True),
    ],
)
def test_a_failure_is_retried_when_a_term_names_it_and_no_never_term_does(
    rule: tuple[str, ...], exit_code: int | None, timed_out: bool, again: bool
) -> None:
    assert retried(rule, exit_code, timed_out) is again


codes = st.integers(1, 255)
terms = st.one_of(
    st.builds(lambda low, span: f"{low}-{min(low + span, 255)}", codes, st.integers(0, 40)),
    codes.map(str),
    st.just("timeout"),
)


@given(st.lists(terms, max_size=6), st.lists(terms, max_size=6), codes, st.booleans())
def test_retried_is_the_rule_written_out(wanted: list[str], never: list[str], code: int, timed_out: bool) -> None:
    def named(rule: list[str]) -> bool:
        for term in rule:
            if term == "timeout":
                if timed_out:
                    return True
            elif not timed_out:
                low, _, high = term.partition("-")
                if int(low) <= code <= int(high or low):
                    return True
        return False

    rule = [*wanted, *(f"!{term}" for term in never)]
    expected = (not wanted or named(wanted)) and not named(never)
    assert retried(rule, code, timed_out) is expected
    assert retried(canonical_retry_on(rule), code, timed_out) is expected


def test_the_job_retries_only_the_failures_its_rule_names_and_says_why_it_did_not() -> None:
    job = running_job(2, ("75", "timeout"))
    job.finish(WORKER, JobState.FAILED, 75, "exited with code 75", now=NOW)
    assert (job.state, job.attempt, job.retries_used) == (JobState.PENDING, 2, 1)
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.finish(WORKER, JobState.FAILED, 2, "exited with code 2", now=NOW)
    assert (job.state, job.exit_code, job.retries_used) == (JobState.FAILED, 2, 1)
    assert job.error_message == "exited with code 2; not retried (--retry-on 75,timeout)"


def test_a_timeout_the_server_enforces_follows_the_rule_too() -> None:
    job = running_job(1, ("timeout",))
    job.time_out("no result", now=NOW)
    assert (job.state, job.attempt) == (JobState.PENDING, 2)
    never = running_job(3, ("!timeout",))
    never.time_out("no result", now=NOW)
    assert (never.state, never.error_message) == (JobState.TIMEOUT, "no result; not retried (--retry-on !timeout)")


def test_a_failure_with_no_retries_left_says_nothing_of_the_rule() -> None:
    job = running_job(1, ("75",))
    job.finish(WORKER, JobState.FAILED, 75, "exited with code 75", now=NOW)
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.finish(WORKER, JobState.FAILED, 75, "exited with code 75", now=NOW)
    assert (job.state, job.error_message) == (JobState.FAILED, "exited with code 75")
    succeeded = running_job(1, ("75",))
    succeeded.finish(WORKER, JobState.SUCCEEDED, 0, None, now=NOW)
    assert (succeeded.state, succeeded.error_message) == (JobState.SUCCEEDED, None)
