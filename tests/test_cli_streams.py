"""The CLI's streams (``--wait``, ``--follow``, ``job logs --follow``) reconnect while the
server is away; how long they keep trying is counted from the server's last word. A
submission without an answer is sent again with its idempotency key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from hodei._proto import jobs_pb2, logs_pb2, worker_pb2
from hodei.cli.client import Connection
from hodei.cli.jobs import StoppedWaiting, _print_log, reconnecting, submit
from hodei.cli.main import explain
from hodei.cli.terminal import Terminal


class _Unavailable(grpc.RpcError):
    """What a stream raises when its server goes away."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Socket closed"


def test_a_stream_cut_after_running_longer_than_the_patience_is_opened_again() -> None:
    opened = []

    def stream() -> Iterator[int]:
        opened.append(time.monotonic())
        if len(opened) == 1:
            for item in (1, 2, 3):
                time.sleep(0.3)  # the stream runs past the patience before it is cut
                yield item
            raise _Unavailable
        yield from (4, 5)

    assert list(reconnecting(stream, patience=0.5)) == [1, 2, 3, 4, 5]
    assert len(opened) == 2


def test_a_server_silent_for_the_patience_is_given_up_on() -> None:
    opened = []

    def stream() -> Iterator[int]:
        opened.append(time.monotonic())
        raise _Unavailable
        yield 0  # a generator, as a stream is

    started = time.monotonic()
    with pytest.raises(_Unavailable):
        list(reconnecting(stream, patience=0.5))
    assert len(opened) >= 2  # it tried again
    assert time.monotonic() - started >= 0.5  # and gave up only once the patience was spent


def test_a_refusal_is_not_retried() -> None:
    class NotFound(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

    opened = []

    def stream() -> Iterator[int]:
        opened.append(1)
        raise NotFound
        yield 0

    with pytest.raises(NotFound):
        list(reconnecting(stream, patience=5))
    assert opened == [1]


class _Client:
    """A client whose QueueJob fails with each error given, then answers."""

    def __init__(self, *errors: grpc.RpcError) -> None:
        self.errors = list(errors)
        self.sent: list[jobs_pb2.QueueJobRequest] = []

    def call(self, method: str, request: jobs_pb2.QueueJobRequest) -> jobs_pb2.QueueJobResponse:
        self.sent.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return jobs_pb2.QueueJobResponse(job_id="j-1", already_submitted=len(self.sent) > 1)


class _Dropped(grpc.RpcError):
    """What a call gets when its server drops it unanswered: more calls were waiting for it
    than it takes (gRPC's server_max_unrequested_time_in_server, its queue's length)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "CANCELLED"


def test_a_submission_without_an_answer_is_sent_again_with_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    client = _Client(_Unavailable(), _Dropped())
    request = jobs_pb2.QueueJobRequest()
    answer = submit(client, Terminal("text"), "QueueJob", request, None)  # type: ignore[arg-type]
    assert answer.job_id == "j-1" and len(client.sent) == 3
    (key,) = {sent.idempotency_key for sent in client.sent}  # one of its own, the same each time
    assert len(key) == 36
    said = capsys.readouterr().err
    assert said.count("[hodei] no answer to the submission") == 1  # said once, not at each try
    assert f"(Socket closed); sending it again (idempotency key {key})" in said
    assert "[hodei] the first try had submitted job j-1: nothing new submitted" in said


def test_a_submission_given_up_on_names_the_key_that_finds_out() -> None:
    client = _Client(*[_Unavailable() for _ in range(1000)])
    request = jobs_pb2.QueueJobRequest()
    with pytest.raises(StoppedWaiting) as stopped:
        submit(client, Terminal("text"), "QueueJob", request, "k-2", patience=0.5)  # type: ignore[arg-type]
    assert stopped.value.code == 1 and len(client.sent) >= 2
    assert "it may have been submitted: the same command with --idempotency-key k-2 submits it only if it was not" in (
        stopped.value.message
    )


def test_a_refused_submission_is_not_sent_again() -> None:
    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.ALREADY_EXISTS

    client = _Client(Refused())
    with pytest.raises(Refused):
        submit(client, Terminal("text"), "RetryJob", jobs_pb2.RetryJobRequest(), "k-3")  # type: ignore[arg-type]
    assert len(client.sent) == 1


def test_a_call_the_server_dropped_is_explained() -> None:
    said = explain(_Dropped(), Connection(server="jobs.example:50051"))
    assert said.startswith("the server at jobs.example:50051 dropped the call unanswered (CANCELLED)"), said
    assert said.endswith("try again")


def test_a_call_the_server_did_not_answer_in_time_is_explained() -> None:
    """gRPC's own words were `Deadline Exceeded (DEADLINE_EXCEEDED)`: a frozen PostgreSQL
    (not down: it holds its connections and answers nothing) kept `job list` waiting 30 s
    for them."""

    class Late(grpc.RpcError):
        def __init__(self, details: str) -> None:
            self._details = details

        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.DEADLINE_EXCEEDED

        def details(self) -> str:
            return self._details

    said = explain(Late("Deadline Exceeded"), Connection(server="jobs.example:50051"))
    assert said.startswith("the server at jobs.example:50051 did not answer in time (DEADLINE_EXCEEDED)"), said
    assert "a change asked for may still be made" in said
    # The server's own DEADLINE_EXCEEDED (a worker silent on `job exec`) says why in its words.
    silent = "command 0 in job j: its worker did not say how it ended within 16s"
    assert explain(Late(silent), Connection(server="jobs.example:50051")) == f"{silent} (DEADLINE_EXCEEDED)"


def test_several_jobs_lines_are_printed_whole_each_after_its_jobs_name(capsys: pytest.CaptureFixture[str]) -> None:
    """A piece of one job's long line is held until its line ends: no other job's line
    lands inside it."""

    def entry(job: str, line: str, partial: bool = False, stream: Any = worker_pb2.LOG_STREAM_STDOUT) -> Any:
        return logs_pb2.JobLogEntry(job_id=job, line=line, partial=partial, stream=stream, attempt=1)

    entries = [
        entry("a", "part-", partial=True),
        entry("b", "whole"),
        entry("a", "more-", partial=True),
        entry("b", "oops", stream=worker_pb2.LOG_STREAM_STDERR),
        entry("a", "end"),
        entry("a", "next"),
    ]
    _print_log(Terminal("text"), entries, False, {"a": "[a] ", "b": "[b] "})
    printed = capsys.readouterr()
    assert printed.out == "[b] whole\n[a] part-more-end\n[a] next\n"
    assert printed.err == "[b] oops\n"
    # One job alone: its pieces as they come, as before.
    _print_log(Terminal("text"), entries[:1] + entries[2:3] + entries[4:5], False)
    assert capsys.readouterr().out == "part-more-end\n"
