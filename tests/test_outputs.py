"""A job's outputs: the agent's reading of $HODEI_OUTPUT (GitHub's format, a job's file
read only as the job could read it), and the job's record of them (the latest attempt's)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hodei_worker import outputs
from hodei_worker.runner import JobUser
from hypothesis import given
from hypothesis import strategies as st

from hodei.domain.job import Job, JobState, outputs_problem
from hodei.domain.phases import latest_outputs, phases_of
from hodei.domain.spec import JobSpec


def test_key_value_lines_and_heredoc_blocks_are_read_as_github_reads_them() -> None:
    text = "version=1.2.3\n\nurl=http://x/?a=b\r\nnotes<<EOF\nline one\nline=two\nEOF\nversion=1.2.4\nempty=\n"
    assert outputs.parse(text) == {
        "version": "1.2.4",
        "url": "http://x/?a=b",
        "notes": "line one\nline=two",
        "empty": "",
    }
    # `<<` after an `=` belongs to the value.
    assert outputs.parse("cmd=cat <<EOF") == {"cmd": "cat <<EOF"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("just words", "line 1 is neither KEY=VALUE nor KEY<<DELIMITER"),
        ("a=1\nnotes<<END\nno end", "line 2: notes<<END has no line 'END' ending it"),
        ("1st=x", "line 1: output name '1st' must be 1 to 128 letters"),
        ("=x", "line 1 is neither KEY=VALUE nor KEY<<DELIMITER"),
        ("".join(f"k{n}=v\n" for n in range(101)), "more than 100 outputs"),
    ],
)
def test_a_file_that_is_not_outputs_is_refused_naming_the_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="^" + says.replace("(", r"\(").replace(")", r"\)")):
        outputs.parse(text)


@given(st.dictionaries(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.-]{0,20}\Z"), st.text(), max_size=10))
def test_any_values_written_as_blocks_read_back(values: dict[str, str]) -> None:
    lines = []
    for key, value in values.items():
        delimiter = "EOF"
        while delimiter in value.replace("\r", "\n").split("\n"):
            delimiter += "_"
        lines += [f"{key}<<{delimiter}", value, delimiter]
    read = outputs.parse("\n".join(lines))
    # A value's lines lose a trailing \r each, as a CRLF file's do.
    assert read == {
        key: "\n".join(line.removesuffix("\r") for line in value.split("\n")) for key, value in values.items()
    }


def test_the_file_is_read_only_as_the_job_could_read_it(tmp_path: Path) -> None:
    """No link is followed (a job's link to /etc/shadow gave it root's file), only a
    regular file (a FIFO would hang the agent), of 64 KiB at most, and as the job's user."""
    path = tmp_path / ".hodei-output"
    assert outputs.read(str(path), None).values == {} and outputs.read(str(path), None).notes == []
    secret = tmp_path / "root-only"
    secret.write_text("password=hunter2\n")
    path.symlink_to(secret)
    found = outputs.read(str(path), None)
    assert found.values == {} and found.notes == [
        f"outputs not kept: {path} cannot be read (Too many levels of symbolic links; a link is not followed)"
    ]
    path.unlink()
    os.mkfifo(path)
    assert outputs.read(str(path), None).notes == [f"outputs not kept: {path} is not a regular file"]
    path.unlink()
    path.write_text("a=" + "x" * outputs.MAX_BYTES)
    assert outputs.read(str(path), None).notes == [f"outputs not kept: {path} holds more than 65536 bytes"]
    path.write_text("a=1\n")
    path.chmod(0o600)
    other = JobUser(os.getuid() + 1, os.getgid() + 1)
    assert outputs.read(str(path), other).notes == [f"outputs not kept: {path} is not readable by the job's user"]
    assert outputs.read(str(path), JobUser(os.getuid(), os.getgid())).values == {"a": "1"}
    path.write_text("broken\n")
    assert outputs.read(str(path), None).notes == ["outputs not kept: line 1 is neither KEY=VALUE nor KEY<<DELIMITER"]


def test_the_server_keeps_a_workers_report_only_within_the_agents_bounds() -> None:
    assert outputs_problem({"a": "1"}) is None
    assert outputs_problem({f"k{n}": "" for n in range(101)}) == "101 outputs; the most is 100"
    assert outputs_problem({"a": "x" * 65536}) == "outputs of 65537 bytes; the most is 65536"
    assert outputs_problem({"no way": "1"}) == "output name 'no way' is not a name"


WORKER, PROVIDER = "8f9b812b-9710-4b9d-aa4f-51a93b907ea6", str(uuid4())


def recorded(job: Job) -> list[tuple[str, str, datetime, dict[str, Any]]]:
    """The job's new events as ``phases_of`` reads them."""
    return [(str(job.id), type(e).__name__, e.timestamp, dict(vars(e))) for e in job.collect_events()]


def test_a_job_keeps_its_latest_ended_attempts_outputs() -> None:
    """A retried job's first attempt left a version; its second left none: the job's
    outputs are the second's (none), never a value of an attempt that was retried."""
    job = Job.submit(JobSpec(name="x", command="true", timeout_seconds=60, retries=1), uuid4())
    job.assign(WORKER, PROVIDER, "docker")
    job.accept(WORKER)
    job.finish(WORKER, JobState.FAILED, 3, "boom", outputs={"version": "1.2"})
    assert job.state is JobState.PENDING
    second = str(uuid4())
    job.assign(second, PROVIDER, "docker")
    job.accept(second)
    events = recorded(job)
    assert latest_outputs(phases_of(events)) == {"version": "1.2"}  # the attempt that ended
    assert job.outputs == {"version": "1.2"}
    job.finish(second, JobState.SUCCEEDED, 0, None)
    events += recorded(job)
    phases = phases_of(events)
    assert [(p.name, dict(p.outputs)) for p in phases if p.name in ("requeued", "finished")] == [
        ("requeued", {"version": "1.2"}),
        ("finished", {}),
    ]
    assert latest_outputs(phases) == {} == job.outputs


def test_the_outputs_of_the_jobs_it_starts_after_are_files_its_user_owns(tmp_path: Path) -> None:
    """$HODEI_AFTER_OUTPUTS/<job id>/<KEY>, each value as it was written (no newline added);
    a job that left none has its directory, empty; a name that is not one is never a path."""
    home = tmp_path / "home"
    home.mkdir()
    user = JobUser(65534, 65534)
    root = outputs.write_after(
        str(home), {"job-a": {"version": "1.2", "notes": "a\nb"}, "job-b": {}, "job-c": {"../x": "no"}}, user
    )
    assert root == str(home / ".hodei-after")
    assert (home / ".hodei-after/job-a/version").read_text() == "1.2"
    assert (home / ".hodei-after/job-a/notes").read_text() == "a\nb"
    assert sorted(p.name for p in (home / ".hodei-after").iterdir()) == ["job-a", "job-b", "job-c"]
    assert list((home / ".hodei-after/job-b").iterdir()) == list((home / ".hodei-after/job-c").iterdir()) == []
    assert not (home / ".hodei-after/x").exists()
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [home / ".hodei-after", *(home / ".hodei-after").rglob("*")]}
    assert owners == {(65534, 65534)}
