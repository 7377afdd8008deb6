"""The log store: a worker's batch sent again is stored once, whoever receives it."""

from __future__ import annotations

from pathlib import Path

from hodei.logs import STDERR, STDOUT, LogLine, LogStore, _last_batch

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
            assert _last_batch(handle, size, chunk) == (3, 39), chunk


def test_output_without_batches_reads_as_before(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append(JOB, lines("no", "batch"))
    assert texts(store) == ["no", "batch"]
    with store.path(JOB).open("rb") as handle:
        assert _last_batch(handle, store.path(JOB).stat().st_size) == (0, 0)
