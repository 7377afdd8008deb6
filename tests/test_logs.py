"""The log store: a worker's batch sent again is stored once, whoever receives it; each
entry knows the attempt that printed it."""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hodei import logs
from hodei.logs import STDERR, STDOUT, Batch, Cursor, LogLine, LogNotStored, LogStore, _marks, attempt_begins

JOB = "6f1c0c9e-0000-4000-8000-000000000001"


def lines(*texts: str) -> list[LogLine]:
    return [LogLine(1_000 + i, STDERR if text.startswith("!") else STDOUT, text) for i, text in enumerate(texts)]


def texts(store: LogStore) -> list[str]:
    return [entry.text for entry in store.read(JOB).entries]


def test_a_batch_sent_again_is_stored_once_even_by_a_restarted_server(tmp_path: Path) -> None:
    first = LogStore(tmp_path)
    assert first.append(JOB, lines("before"), (1, 1)) == 1
    assert first.append(JOB, lines("before"), (1, 1)) is None  # its acknowledgement was lost
    # The server died; the worker sends the batch again to another (or a restarted) server.
    restarted = LogStore(tmp_path)
    assert restarted.append(JOB, lines("before"), (1, 1)) is None
    assert restarted.append(JOB, lines("after", "!warned"), (1, 2)) == 2
    # A retry's worker numbers its batches from 1 again: a later attempt is new output.
    assert restarted.append(JOB, lines("second attempt"), (2, 1)) == 1
    assert LogStore(tmp_path).append(JOB, lines("second attempt"), (2, 1)) is None
    assert texts(LogStore(tmp_path)) == ["before", "after", "!warned", "second attempt"]
    assert restarted.stats(JOB)[1] == 4  # the batch records are not entries


def test_the_last_batch_is_found_across_chunk_boundaries(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    for sequence in range(1, 40):
        store.append(JOB, lines(f"line {sequence}" * 7), (3, sequence))
    path = store.path(JOB)
    size = path.stat().st_size
    for chunk in (1, 2, 3, 7, 64, 1 << 20):
        with path.open("rb") as handle:
            start = len(handle.readline())
            assert [m.batch for m in _marks(handle, size, start, chunk)] == [(3, n) for n in range(39, 0, -1)], chunk


def test_output_without_batches_reads_as_before(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append(JOB, lines("no", "batch"))
    assert texts(store) == ["no", "batch"]
    assert {entry.attempt for entry in store.read(JOB).entries} == {0}  # not recorded
    assert store.tail(JOB, 1) == (2, None) and store.stats(JOB)[1] == 2  # counted from the start
    LogStore(tmp_path).append(JOB, lines("then", "batched"), (1, 1))  # another server picks it up
    first, cursor = store.tail(JOB, 1)
    assert (first, cursor is not None and cursor.line) == (4, 3)
    assert [(e.number, e.text) for e in store.read(JOB, first, cursor=cursor).entries] == [(4, "batched")]


def _log(draw: st.DrawFn) -> list[tuple[list[LogLine], Batch]]:
    """Batches as workers send them: attempts in turn, pieces of long lines across batches."""
    batches, at = [], 1_000
    for attempt in range(1, draw(st.integers(1, 3)) + 1):
        for sequence in range(1, draw(st.integers(1, 6)) + 1):
            pieces = []
            for _ in range(draw(st.integers(1, 5))):
                at += draw(st.integers(0, 3_000))
                partial = draw(st.booleans())
                pieces.append(
                    LogLine(at, draw(st.sampled_from([STDOUT, STDERR])), f"{attempt}.{sequence}.{at}", partial)
                )
            batches.append((pieces, (attempt, sequence)))
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=st.composite(_log)(), count=st.integers(1, 40), servers=st.integers(1, 3), chunk=st.integers(1, 64))
def test_the_tail_read_from_the_last_batches_is_the_tail_read_from_the_start(
    tmp_path_factory: pytest.TempPathFactory,
    log: list[tuple[list[LogLine], Batch]],
    count: int,
    servers: int,
    chunk: int,
) -> None:
    """Whatever the log (attempts, long lines split across batches, servers taking turns
    on it) and however small the pieces it is read back in, the last ``count`` lines read
    from where ``tail`` points are those read from the first line, with their numbers,
    times and attempts; ``stats`` counts them too."""
    directory = tmp_path_factory.mktemp("logs")
    writers = [LogStore(directory) for _ in range(servers)]
    with mock.patch.object(logs, "FIRST_CHUNK", chunk):
        for index, (pieces, batch) in enumerate(log):
            writers[index % servers].append(JOB, pieces, batch)
        store = LogStore(directory)
        whole = store.read(JOB).entries
        wholes = sum(1 for entry in whole if not entry.partial)
        assert store.stats(JOB)[1] == wholes
        first, cursor = store.tail(JOB, count)
        assert first == max(1, wholes - count + 1)
        assert cursor is not None or first == 1  # every batch says where it is
        assert store.read(JOB, first, cursor=cursor).entries == [e for e in whole if e.number >= first]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=st.composite(_log)(), servers=st.integers(1, 3), chunk=st.integers(1, 64), data=st.data())
def test_the_first_line_since_a_time_found_from_the_last_batches_is_the_one_found_from_the_start(
    tmp_path_factory: pytest.TempPathFactory,
    log: list[tuple[list[LogLine], Batch]],
    servers: int,
    chunk: int,
    data: st.DataObject,
) -> None:
    """``--since``: begun from the last batch before that time that does not begin in
    the middle of a line, the answer is the one a read from the first line gives."""
    directory = tmp_path_factory.mktemp("logs")
    writers = [LogStore(directory) for _ in range(servers)]
    for index, (pieces, batch) in enumerate(log):
        writers[index % servers].append(JOB, pieces, batch)
    store = LogStore(directory)
    times = [piece.at_ms for pieces, _ in log for piece in pieces]
    at = data.draw(st.integers(min(times) - 1, max(times) + 1))

    def from_the_start() -> int:
        number = 1
        for entry, after in store._entries(JOB, Cursor(), since_ms=at):
            if entry is not None:
                return entry.number
            number = after.line
        return number

    with mock.patch.object(logs, "FIRST_CHUNK", chunk):
        assert store.first_line_at(JOB, at) == from_the_start()


def test_the_tail_of_a_long_log_is_read_from_its_end(tmp_path: Path) -> None:
    """A tail costs what it reads, not what the log holds before it."""
    store = LogStore(tmp_path)
    for sequence in range(1, 201):
        store.append(JOB, [LogLine(1_000 * sequence + i, STDOUT, f"{sequence}.{i}") for i in range(100)], (1, sequence))
    size = store.path(JOB).stat().st_size
    first, cursor = store.tail(JOB, 150)
    assert first == 20_000 - 150 + 1 and store.stats(JOB) == (size, 20_000)
    assert cursor is not None and cursor.line == 19_801 and size - cursor.offset < size // 50  # the last two batches
    page = store.read(JOB, first, cursor=cursor)
    assert [entry.text for entry in page.entries] == [f"{sequence}.{i}" for sequence in (199, 200) for i in range(100)][
        50:
    ]
    assert page.entries[0].at_ms == 199_050 and page.entries[0].attempt == 1


def test_a_log_whose_batches_do_not_say_where_they_are_is_read_from_its_start(tmp_path: Path) -> None:
    """Files written before batches said where they are (``S1.2:``): counted from the
    start, as before; appending to one goes on numbering its lines."""
    path = tmp_path / f"{JOB}.log"
    path.write_bytes(b"hodei-log 2 5000\nS1.1:\no0:a\ne5:b\nS1.2:\no10:c\nO1:d, \n")
    store = LogStore(tmp_path)
    assert store.tail(JOB, 2) == (2, None) and store.stats(JOB)[1] == 3
    assert store.append(JOB, [LogLine(5_100, STDOUT, "the end of d")], (1, 3)) == 1
    assert store.append(JOB, [LogLine(5_200, STDOUT, "e")], (1, 4)) == 1
    first, cursor = store.tail(JOB, 1)
    assert first == 5 and cursor is not None and cursor.line == 4
    assert [(e.number, e.text, e.at_ms) for e in store.read(JOB, first, cursor=cursor).entries] == [(5, "e", 5_200)]
    assert [(e.number, e.text) for e in store.read(JOB, 3).entries] == [
        (3, "c"),
        (4, "d, "),
        (4, "the end of d"),
        (5, "e"),
    ]


def test_each_entry_knows_its_attempt_also_when_read_from_a_page_token(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append(JOB, lines("first", "!failed"), (1, 1))
    store.append(JOB, lines("first again"), (1, 2))
    store.append(JOB, lines("second", "second's end"), (2, 1))
    store.append(JOB, lines("third"), (3, 1))
    whole = store.read(JOB).entries
    assert [(e.text, e.attempt) for e in whole] == [
        ("first", 1),
        ("!failed", 1),
        ("first again", 1),
        ("second", 2),
        ("second's end", 2),
        ("third", 3),
    ]
    # Pages of one entry each, through tokens: each page starts where the last ended,
    # past the batch records that say which attempt it is in.
    paged, cursor = [], None
    while True:
        page = store.read(JOB, limit=1, cursor=cursor)
        paged += page.entries
        if not page.more:
            break
        cursor = Cursor.parse(page.next.token())
    assert paged == whole
    # From a line in the middle of an attempt (a follower reconnecting).
    assert [(e.number, e.attempt) for e in store.read(JOB, from_line=5).entries] == [(5, 2), (6, 3)]


def test_one_attempts_output_keeps_the_whole_logs_line_numbers(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append(JOB, lines("a1", "b1"), (1, 1))
    store.append(JOB, lines("a2", "b2", "c2"), (2, 1))
    store.append(JOB, lines("a3"), (3, 1))
    second = store.read(JOB, attempt=2)
    assert [(e.number, e.text) for e in second.entries] == [(3, "a2"), (4, "b2"), (5, "c2")]
    page = store.read(JOB, limit=2, attempt=2)
    assert [e.text for e in page.entries] == ["a2", "b2"] and page.more
    rest = store.read(JOB, cursor=Cursor.parse(page.next.token()), attempt=2)
    assert [e.text for e in rest.entries] == ["c2"] and not rest.more
    assert store.read(JOB, attempt=4).entries == []


def test_attempts_begin_where_the_attempt_changes() -> None:
    assert not attempt_begins(None, 1)  # a job that ran once shows no marker
    assert attempt_begins(1, 2) and attempt_begins(2, 3)
    assert attempt_begins(None, 2)  # the first line shown is a later attempt's
    assert not attempt_begins(2, 2)
    assert not attempt_begins(None, 0) and not attempt_begins(0, 0)  # no attempts recorded


@contextlib.contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes fail, as on a full disk (``RLIMIT_FSIZE``: EFBIG, after
    writing what fits)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_output_that_cannot_be_written_is_counted_and_the_log_says_so(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append(JOB, lines("first"), (1, 1))
    size = store.path(JOB).stat().st_size
    with files_limited_to(size + 40):  # room for a part of a record: the write is cut short
        with pytest.raises(LogNotStored) as lost:
            store.append(JOB, lines(*(f"long line {i} " * 10 for i in range(8))), (1, 2))
        assert lost.value.lines == 8
        assert store.path(JOB).stat().st_size == size  # no torn record left to run into the next
        assert store.append(JOB, lines("again"), (1, 2)) is None  # handled: not counted twice
        with pytest.raises(LogNotStored):
            store.append(JOB, lines("also lost", "x" * 100), (1, 3))
    assert store.append(JOB, lines("after"), (1, 4)) == 1
    assert texts(store) == ["first", "[hodei] 10 lines of output could not be stored here (File too large)", "after"]
    assert store.stats(JOB)[1] == 3
    store.append(JOB, lines("last"), (1, 5))
    first, cursor = store.tail(JOB, 1)  # the notice counted as a line where the batches say
    assert first == 4 and cursor is not None and cursor.line == 2
    assert [(e.number, e.text) for e in store.read(JOB, first, cursor=cursor).entries] == [(4, "last")]

    other = "6f1c0c9e-0000-4000-8000-000000000002"
    store.append(other, lines("begun"), (1, 1))
    with files_limited_to(store.path(other).stat().st_size), pytest.raises(LogNotStored):
        store.append(other, lines("lost at the end"), (1, 2))
    store.forget(other)  # its output ended: the notice goes at the end
    assert [entry.text for entry in store.read(other).entries] == [
        "begun",
        "[hodei] 1 line of output could not be stored here (File too large)",
    ]


def test_servers_taking_turns_on_a_log_each_pick_up_what_the_other_wrote(tmp_path: Path) -> None:
    """A worker's stream moves to another server and back: each appends after the other's
    records, with the times and batch numbers they hold, whatever it had cached."""
    first, second = LogStore(tmp_path), LogStore(tmp_path)
    assert first.append(JOB, [LogLine(1_000, STDOUT, "one")], (1, 1)) == 1
    assert second.append(JOB, [LogLine(2_000, STDOUT, "two")], (1, 2)) == 1
    assert first.append(JOB, [LogLine(3_000, STDOUT, "two")], (1, 2)) is None  # stored by the other
    assert first.append(JOB, [LogLine(4_000, STDOUT, "three")], (1, 3)) == 1
    entries = LogStore(tmp_path).read(JOB).entries
    assert [(entry.text, entry.at_ms, entry.number) for entry in entries] == [
        ("one", 1_000, 1),
        ("two", 2_000, 2),
        ("three", 4_000, 3),
    ]
    store = LogStore(tmp_path)
    store.append(JOB, [LogLine(5_000, STDOUT, "four")], (1, 4))
    store.path(JOB).unlink()  # removed by hand while the job ran: a new file, still readable
    store.append(JOB, [LogLine(6_000, STDOUT, "five")], (1, 5))
    assert [(entry.text, entry.at_ms) for entry in store.read(JOB).entries] == [("five", 6_000)]


def test_reading_past_the_lines_asked_for_keeps_times_and_attempts(tmp_path: Path) -> None:
    """Lines before ``from_line`` are counted, not decoded: what follows them, and a page
    token taken past the end, still carry the right time and attempt."""
    store = LogStore(tmp_path)
    store.append(JOB, [LogLine(1_000 + i, STDOUT, f"a{i}") for i in range(5)], (1, 1))
    store.append(JOB, [LogLine(2_000 + i, STDOUT, f"b{i}") for i in range(5)], (2, 1))
    assert [(e.number, e.text, e.at_ms, e.attempt) for e in store.read(JOB, from_line=9).entries] == [
        (9, "b3", 2_003, 2),
        (10, "b4", 2_004, 2),
    ]
    past = store.read(JOB, from_line=20)
    assert past.entries == [] and past.next.line == 11
    store.append(JOB, [LogLine(3_000, STDOUT, "c0")], (2, 2))
    later = store.read(JOB, cursor=Cursor.parse(past.next.token())).entries
    assert [(e.number, e.text, e.at_ms, e.attempt) for e in later] == [(11, "c0", 3_000, 2)]


def test_the_first_line_read_at_or_after_a_time_begins_with_its_first_piece(tmp_path: Path) -> None:
    """A long line whose first piece came before that time comes whole or not at all."""
    store = LogStore(tmp_path)
    store.append(JOB, [LogLine(1_000, STDOUT, "early"), LogLine(2_000, STDOUT, "long, ", partial=True)], (1, 1))
    store.append(JOB, [LogLine(3_000, STDOUT, "end of long"), LogLine(3_000, STDERR, "late")], (1, 2))
    store.append(JOB, [LogLine(5_000, STDOUT, "later")], (1, 3))
    assert [store.first_line_at(JOB, at) for at in (0, 1_000, 1_001, 2_000, 2_001, 3_000, 5_000, 5_001)] == [
        1,
        1,
        2,  # the long line: its first piece at 2,000 ms
        2,
        3,  # not its second piece (at 3,000 ms): the next whole line
        3,
        4,
        5,  # none yet: the next line to come
    ]
    assert LogStore(tmp_path / "none").first_line_at(JOB, 0) == 1
