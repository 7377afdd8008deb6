"""Job logs on disk: one file per job, ``<log dir>/<job id>.log``, compact and bounded.

The server appends as batches arrive; the file stays after the worker is gone, and
``job_log_files`` points at it. Format (version 2)::

    hodei-log 2 <epoch ms of the first record>
    o12:a line of stdout, 12 ms after the previous record
    e0:a line of stderr
    O3:the first 256 KiB of a long line, continued in the next record
    o0:...and its end
    T86400000:                      (the clock: ms since the first record, when a new
                                     writer cannot know the last record's time)
    S2.42:1250.7                    (batch 42 of the attempt-2 worker begins here; the
                                     record before was 1250 ms after the first, and the
                                     next belongs to line 7)

A record is its kind (``o``/``e``; upper case: the line goes on in the next record),
the milliseconds since the previous record, ``:`` and the text: about four bytes on top
of the output, where an ISO timestamp per line cost thirty-odd. Readers put split lines
back together. Version 1 files (``<ISO time> <stream> <text>`` per line) still read.

A batch a worker sends again (its acknowledgement was lost when a server died) is
stored once: each batch's records follow an ``S`` record with the worker's attempt and the
batch's sequence number, in the same write, so whichever server receives the repeat finds
it already in the file. The ``S`` records also say which attempt printed each line: a
retried job's log holds every attempt's output, and readers can tell them apart. And they
say where they are (the clock and the line number there), so that the end of a log is read
from its last batches, not from its first line: ``tail`` and ``stats`` cost the same for a
gigabyte of output as for a page of it. ``S`` records of files written before say only the
batch (``S2.42:``); readers then count from the start, as they did.

Each job's log has a cap (``HODEI_MAX_LOG_BYTES``): past it one notice is written and
the rest of the output is dropped, while the job goes on. A batch that cannot be written
at all (the disk full) is dropped and counted, and the log says how many lines are
missing where writing works again: the job goes on then too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

STDOUT = "stdout"
STDERR = "stderr"
HEADER = b"hodei-log 2 "
_KIND = {STDOUT: "o", STDERR: "e"}
_STREAM = {"o": STDOUT, "e": STDERR}
_STRIPES = 64
# A worker's batch: (its attempt, the batch's sequence number).
Batch = tuple[int, int]
# What an entry costs on the wire beyond its text (ids, number, time): pages count it.
ENTRY_OVERHEAD = 80
# The first piece of a log read from its end, in bytes (then twice as much, and so on).
FIRST_CHUNK = 1 << 14

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogEntry:
    """A line of output, or a piece of a long one (``partial``: the line goes on in the
    next entry, which has the same number): reading never joins a line whole."""

    number: int
    # Milliseconds since the epoch (the format's own precision).
    at_ms: int
    stream: str
    text: str
    partial: bool = False
    # The attempt whose worker sent it (from the batch's ``S`` record); 0 where the file
    # did not record it (logs written before batches were numbered).
    attempt: int = 0


def attempt_begins(previous: int | None, attempt: int) -> bool:
    """Whether a reader shows that another attempt's output begins at this entry: where
    the attempt changes, or at the first entry of an attempt after the first (what came
    before was not shown); never for a log that did not record attempts (0)."""
    return attempt not in (0, previous or 1)


@dataclass(frozen=True)
class LogLine:
    """One piece of output as a worker sent it; ``partial``: the line goes on in the next."""

    at_ms: int
    stream: str
    text: str
    partial: bool = False


@dataclass(frozen=True)
class Cursor:
    """Where reading goes on: a byte offset, the number of the entry there, and the
    clock and attempt at that point (records hold times relative to the one before, and
    the attempt of the last ``S`` record before them)."""

    offset: int = 0
    line: int = 1
    clock_ms: int | None = None
    attempt: int = 0

    def token(self) -> str:
        return f"{self.offset}.{self.line}.{'' if self.clock_ms is None else self.clock_ms}.{self.attempt}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        try:
            offset, line, clock, attempt = token.split(".")
            return cls(int(offset), int(line), int(clock) if clock else None, int(attempt))
        except ValueError:
            raise ValueError(f"`{token[:40]}` is not a page token of this log") from None


@dataclass(frozen=True)
class Page:
    entries: list[LogEntry]
    next: Cursor
    # Whether a whole entry follows this page.
    more: bool = False


class LogNotStored(Exception):
    """A batch of output could not be written (the log directory full or gone)."""

    def __init__(self, job_id: str, lines: int, reason: str) -> None:
        super().__init__(f"{lines} lines of job {job_id}'s output could not be stored: {reason}")
        self.lines = lines


@dataclass
class _Writer:
    """What an appender knows of one file: its size and the last record's time."""

    size: int
    base_ms: int | None
    last_ms: int | None
    # (attempt, sequence number) of the last batch in the file; (0, 0): none.
    batch: Batch = (0, 0)
    truncated: bool = False
    # Lines that could not be written (the disk full, the directory gone) since the last
    # notice of it, and why: the log says so where writing works again, or at the end.
    lost: int = 0
    lost_because: str = ""
    # The number of the line the next record belongs to.
    line: int = 1

    def begin(self, batch: Batch) -> str:
        """The ``S`` record a batch's records follow: where it is in the file, for readers
        that start there (the last record's clock is known by now)."""
        self.batch = batch
        return f"S{batch[0]}.{batch[1]}:{(self.last_ms or 0) - (self.base_ms or 0)}.{self.line}\n"

    def notice(self) -> str:
        lines = "1 line" if self.lost == 1 else f"{self.lost} lines"
        return f"e0:[hodei] {lines} of output could not be stored here ({self.lost_because})\n"


class LogStore:
    def __init__(self, directory: Path, max_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self._writers: dict[str, _Writer] = {}

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.log"

    def uri(self, job_id: str) -> str:
        return self.path(job_id).resolve().as_uri()

    def _lock(self, job_id: str) -> threading.Lock:
        return self._locks[hash(job_id) % _STRIPES]

    def append(self, job_id: str, lines: Iterable[LogLine], batch: Batch | None = None) -> int | None:
        """Appends records; returns how many were written (none past the cap), or None
        when ``batch`` (the worker's attempt, the batch's sequence number) is already in
        the file: attempts follow each other, and a worker numbers its batches from 1.
        Raises LogNotStored when the file cannot be written: the lines are counted, and
        the log says so where it can be written again."""
        with self._lock(job_id):
            stored = self._writers.get(job_id)
            if stored is None or file_size(self.path(job_id)) != stored.size:
                # Not ours alone: another server appended while the worker's stream was
                # there (or the file was removed). Pick it up as it is now.
                stored = self._open(job_id)
            if batch is not None and batch <= stored.batch:
                return None
            writer = replace(stored)  # what the file will be once the records are written
            out: list[str] = []
            written = 0
            budget = self.max_bytes - writer.size
            for line in lines:
                if writer.truncated:
                    break
                at = line.at_ms
                if writer.base_ms is None:
                    writer.base_ms = writer.last_ms = at
                    out.append(f"hodei-log 2 {at}\n")
                elif writer.last_ms is None:
                    # A new writer of a file begun elsewhere: it states the clock first.
                    out.append(f"T{at - writer.base_ms}:\n")
                    writer.last_ms = at
                if batch is not None and not written:
                    out.append(writer.begin(batch))
                if writer.lost:
                    out.append(writer.notice())
                    writer.lost = 0
                    writer.line += 1
                kind = _KIND[line.stream].upper() if line.partial else _KIND[line.stream]
                record = f"{kind}{at - (writer.last_ms or at)}:{line.text.replace(chr(10), ' ')}\n"
                size = len(record.encode("utf-8", errors="surrogateescape"))
                if size > budget:
                    record = (
                        f"e0:[hodei] the log was truncated here: the job's output passed {self.max_bytes} bytes "
                        "(HODEI_MAX_LOG_BYTES); the rest was not stored\n"
                    )
                    writer.truncated = True
                    size = len(record.encode())
                writer.last_ms = at
                budget -= size
                out.append(record)
                written += 1
                if not record[0].isupper():
                    writer.line += 1
            if out:
                try:
                    writer.size = self._write(job_id, stored.size, "".join(out))
                except OSError as exc:
                    if not stored.lost:
                        log.error("job %s: its output cannot be stored in %s: %s", job_id, self.directory, exc)
                    stored.lost += written
                    stored.lost_because = exc.strerror or str(exc)
                    stored.batch = writer.batch  # handled: a batch sent again is not counted twice
                    self._writers[job_id] = stored
                    raise LogNotStored(job_id, written, stored.lost_because) from exc
            self._writers[job_id] = writer
            return written

    def _write(self, job_id: str, size: int, records: str) -> int:
        """Appends whole records to a file of ``size`` bytes, or nothing: a write cut short
        (the disk full) is taken back, since a torn record would run into the next one.
        Returns the new size."""
        data = records.encode("utf-8", errors="surrogateescape")
        path = self.path(job_id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as handle:
                handle.write(data)
        except OSError:
            with contextlib.suppress(OSError):
                os.truncate(path, size)
            raise
        return size + len(data)

    def _open(self, job_id: str) -> _Writer:
        """Picks up a file another writer began (another server, or before a restart)."""
        path = self.path(job_id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return _Writer(0, None, None)
        with path.open("rb") as handle:
            base, batch, entries = _written(handle, size)
        return _Writer(size, base, None, batch, line=entries + 1)

    def forget(self, job_id: str) -> None:
        """Drops what the appender cached about the job (its output has ended), once the
        log says how many of its last lines could not be stored, if it can."""
        with self._lock(job_id):
            writer = self._writers.pop(job_id, None)
            if writer is not None and writer.lost and writer.base_ms is not None:
                with contextlib.suppress(OSError):
                    self._write(job_id, writer.size, writer.notice())

    def ensure(self, job_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path(job_id).touch(exist_ok=True)

    def stats(self, job_id: str) -> tuple[int, int]:
        """(size in bytes, number of entries): whole lines, a split line counting once."""
        path = self.path(job_id)
        if not path.exists():
            return 0, 0
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return size, _written(handle, size)[2]

    def tail(self, job_id: str, count: int) -> tuple[int, Cursor | None]:
        """Where the last ``count`` lines written so far begin: the first one's number, and
        a cursor from which ``read`` reaches it without reading the log before it (at the
        last ``S`` record before it; None: from the start, for a file that does not say)."""
        wanted = None
        with contextlib.closing(self._walk_back(job_id)) as marks:
            for base, mark in marks:
                if (place := mark.place) is None:
                    break
                if wanted is None:
                    wanted = max(1, place.line - 1 + mark.after - count + 1)
                # Before the line: a line's first pieces may be in an earlier batch.
                if place.line < wanted:
                    return wanted, mark.cursor(place, base)
        if wanted is not None:
            return wanted, None
        _, lines = self.stats(job_id)
        return max(1, lines - count + 1), None

    def first_line_at(self, job_id: str, at_ms: int) -> int:
        """The number of the first line the worker read at or after ``at_ms`` (epoch ms),
        or the next line to come when none was; counted without decoding the lines before,
        from the last batch begun before that time and not in the middle of a line (the
        worker's clock goes forward: a worker reads and sends its lines in order)."""
        cursor = Cursor()
        with contextlib.closing(self._walk_back(job_id)) as marks:
            for base, mark in marks:
                if (place := mark.place) is None:
                    break
                if base + place.clock < at_ms and not mark.continues:
                    cursor = mark.cursor(place, base)
                    break
        number = cursor.line
        for entry, after in self._entries(job_id, cursor, since_ms=at_ms):
            if entry is not None:
                return entry.number
            number = after.line
        return number

    def _walk_back(self, job_id: str) -> Generator[tuple[int, _Mark]]:
        """The log's ``S`` records from its end back, each with the log's first time (none
        for a log without them, or of version 1)."""
        try:
            handle = self.path(job_id).open("rb")
        except FileNotFoundError:
            return
        with handle:
            first = handle.readline()
            if first.startswith(HEADER):
                base = int(first[len(HEADER) :])
                for mark in _marks(handle, os.fstat(handle.fileno()).st_size, len(first)):
                    yield base, mark

    def read(
        self,
        job_id: str,
        from_line: int = 1,
        limit: int | None = None,
        cursor: Cursor | None = None,
        max_bytes: int | None = None,
        attempt: int | None = None,
    ) -> Page:
        """Up to ``limit`` entries (pieces of long lines count one each) and about
        ``max_bytes`` on the wire, from line ``from_line`` (counted from 1), reading from
        where ``cursor`` (a previous page's ``next``, or ``tail``'s) points; with
        ``attempt``, only that attempt's (line numbers stay the whole log's)."""
        entries: list[LogEntry] = []
        size = 0
        at = cursor or Cursor()
        start = max(from_line, at.line)
        for entry, after in self._entries(job_id, at, start):
            if entry is None or entry.number < start or (attempt is not None and entry.attempt != attempt):
                at = after
                continue
            full = (limit is not None and len(entries) >= limit) or (max_bytes is not None and size >= max_bytes)
            if full:
                return Page(entries, at, more=True)
            entries.append(entry)
            size += len(entry.text) + ENTRY_OVERHEAD
            at = after
        return Page(entries, at)

    def _entries(
        self, job_id: str, cursor: Cursor, start: int = 1, since_ms: int | None = None
    ) -> Iterator[tuple[LogEntry | None, Cursor]]:
        """Entries from line ``start`` (and, with ``since_ms``, from the first line read
        then or later), each with the cursor just past it; a record not wholly written yet
        is not returned. Lines before are only counted (a tail of a long log passes most
        of it): if nothing follows them, a last ``None`` carries the cursor past them."""
        path = self.path(job_id)
        if not path.exists():
            return
        with path.open("rb") as handle:
            first = handle.readline()
            if not first.startswith(HEADER):
                yield from _v1_entries(handle, cursor)
                return
            base = int(first[len(HEADER) :])
            clock, attempt = base, 0
            if cursor.offset > handle.tell():
                handle.seek(cursor.offset)
                clock = cursor.clock_ms if cursor.clock_ms is not None else base
                attempt = cursor.attempt
            number, skipped, unfinished = cursor.line, False, 0
            early = 0  # the number of a line read before since_ms: its later pieces go with it
            for raw in handle:
                if not raw.endswith(b"\n"):
                    unfinished = len(raw)
                    break
                kind = chr(raw[0])
                if kind == "S":
                    attempt = int(raw[1:].partition(b".")[0])
                    continue
                delta, _, rest = raw[1:-1].partition(b":")
                clock = base + int(delta) if kind == "T" else clock + int(delta)
                if kind == "T":
                    continue
                partial = kind.isupper()
                following = number if partial else number + 1
                if since_ms is not None and (clock < since_ms or number == early):
                    early = number
                if number < start or number == early:
                    number, skipped = following, True
                    continue
                skipped = False
                text = rest.decode("utf-8", errors="replace")
                yield (
                    LogEntry(number, clock, _STREAM[kind.lower()], text, partial, attempt),
                    Cursor(handle.tell(), following, clock, attempt),
                )
                number = following
            if skipped:
                yield None, Cursor(handle.tell() - unfinished, number, clock, attempt)


def file_size(path: Path) -> int:
    """0 for a file not there (yet)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _written(handle: BinaryIO, size: int) -> tuple[int | None, Batch, int]:
    """What a file of ``size`` bytes holds so far: its first record's time (None: version
    1), its last batch ((0, 0): none), and its entries, from its newest ``S`` record when
    that says where it is, else counted from the start."""
    first = handle.readline()
    if not first.startswith(HEADER):
        return None, (0, 0), _count_entries(handle, versioned=False)
    mark = next(_marks(handle, size, len(first)), None)
    batch = mark.batch if mark is not None else (0, 0)
    if mark is not None and mark.place is not None:
        return int(first[len(HEADER) :]), batch, mark.place.line - 1 + mark.after
    # Written without batches, or before they said where they are.
    return int(first[len(HEADER) :]), batch, _count_entries(handle, versioned=True)


def _count_entries(handle: BinaryIO, versioned: bool) -> int:
    """The file's entries, counted from its start without decoding them."""
    handle.seek(0)
    if not versioned:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    entries, tail = 0, b""
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        # A record of a whole line (or a line's last piece) starts `o` or `e`.
        data = tail + chunk
        entries += data.count(b"\no") + data.count(b"\ne")
        tail = chunk[-1:]
    return entries


def _regions_backward(handle: BinaryIO, size: int, start: int, chunk: int | None = None) -> Iterator[tuple[int, bytes]]:
    """The file's whole records from its end back to ``start`` (the first record's
    offset), a region of them at a time, each with its offset: records joined by their
    newlines, the last one's left out; a record not wholly written is left out. Read in
    chunks from ``chunk`` bytes, doubling up to 64 times that: a consumer that stops
    within the last batch (a thousand lines at most) reads no more than it needs."""
    chunk = chunk or FIRST_CHUNK
    end, rest, finished, most = size, b"", False, chunk << 6
    while end > start:
        begin = max(start, end - chunk)
        chunk = min(chunk * 2, most)
        handle.seek(begin)
        data = handle.read(end - begin) + rest
        end = begin
        if not finished:
            cut = data.rfind(b"\n")
            if cut < 0:
                continue  # within a record not wholly written
            data, finished = data[:cut], True
        if begin == start:
            yield begin, data
            return
        # The first record here began before this chunk: it goes with the one before.
        first = data.find(b"\n")
        rest = data if first < 0 else data[:first]
        if first >= 0:
            yield begin + first + 1, data[first + 1 :]


@dataclass(frozen=True)
class _Place:
    """Where an ``S`` record is: the clock of the record before it (ms since the log's
    first) and the number of the line the next record belongs to."""

    clock: int
    line: int


@dataclass(frozen=True)
class _Mark:
    """An ``S`` record: its batch, where it is (None in files written before it said),
    the whole lines after it, the offset of the record after it, and whether the record
    of output before it is a piece of a line that goes on after it."""

    batch: Batch
    place: _Place | None
    after: int
    offset: int
    continues: bool = False

    def cursor(self, place: _Place, base: int) -> Cursor:
        """Reading from just after it."""
        return Cursor(self.offset, place.line, base + place.clock, self.batch[0])


def _marks(handle: BinaryIO, size: int, start: int, chunk: int | None = None) -> Iterator[_Mark]:
    """The file's ``S`` records from its end back, read from the end (a consumer stops
    when it has what it needs: the newest is within a batch of the end); each once the
    record of output before it was seen (whether a line goes on across it). The records
    between them are counted, not split: a region at a time, by the bytes that begin
    them."""
    after, waiting = 0, None
    for offset, region in _regions_backward(handle, size, start, chunk):
        text = b"\n" + region  # every record follows a newline: text[k] is at offset + k - 1
        high = len(text)
        if waiting is not None and (kind := _kind_before(text, high)) is not None:
            yield replace(waiting, continues=kind in (b"O", b"E"))
            waiting = None
        found = text.rfind(b"\nS", 0, high)
        while found >= 0:
            after += _entries_in(text[found + 1 : high])
            ends = text.find(b"\n", found + 1)
            record = text[found + 1 : ends if ends >= 0 else len(text)]
            batch, _, where = record[1:].partition(b":")
            attempt, _, number = batch.partition(b".")
            clock, _, line = where.partition(b".")
            place = _Place(int(clock), int(line)) if line else None
            mark = _Mark((int(attempt), int(number)), place, after, offset + found + len(record) + 1)
            kind = _kind_before(text, found)
            if kind is None:
                waiting = mark  # its record before is in the region before this one
            else:
                yield replace(mark, continues=kind in (b"O", b"E"))
            high = found
            found = text.rfind(b"\nS", 0, high)
        after += _entries_in(text[:high])
    if waiting is not None:
        yield waiting


def _entries_in(text: bytes) -> int:
    """The records of whole lines (or of a line's last piece) that begin in ``text``."""
    return text.count(b"\no") + text.count(b"\ne")


def _kind_before(text: bytes, position: int) -> bytes | None:
    """The kind of the last record of output, or ``S`` record, that begins before
    ``position`` in ``text`` (None: none does)."""
    newline = text.rfind(b"\n", 0, position)
    while newline >= 0:
        kind = text[newline + 1 : newline + 2]
        if kind in (b"o", b"e", b"O", b"E", b"S"):
            return kind
        newline = text.rfind(b"\n", 0, newline)
    return None


def _v1_entries(handle: BinaryIO, cursor: Cursor) -> Iterator[tuple[LogEntry, Cursor]]:
    """Version 1: ``<ISO time> <stream> <text>`` per line."""
    handle.seek(cursor.offset)
    number = cursor.line
    for raw in handle:
        if not raw.endswith(b"\n"):
            return
        stamp, _, rest = raw.decode("utf-8", errors="replace").rstrip("\n").partition(" ")
        stream, _, text = rest.partition(" ")
        at_ms = int(datetime.fromisoformat(stamp).timestamp() * 1000)
        yield LogEntry(number, at_ms, stream, text), Cursor(handle.tell(), number + 1)
        number += 1
