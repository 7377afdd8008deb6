"""Job logs on disk: one file per job, ``<log dir>/<job id>.log``.

Each line is ``<ISO time> <stdout|stderr> <text>``. The server appends as batches
arrive; the file stays after the worker is gone, and ``job_log_files`` points at it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STDOUT = "stdout"
STDERR = "stderr"


@dataclass(frozen=True)
class LogEntry:
    number: int
    timestamp: datetime
    stream: str
    text: str


def _format(timestamp: datetime, stream: str, text: str) -> str:
    clean = text.replace("\r", "").replace("\n", " ")
    return f"{timestamp.isoformat()} {stream} {clean}\n"


def _parse(number: int, raw: str) -> LogEntry:
    stamp, _, rest = raw.rstrip("\n").partition(" ")
    stream, _, text = rest.partition(" ")
    return LogEntry(number, datetime.fromisoformat(stamp), stream, text)


class LogStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.log"

    def uri(self, job_id: str) -> str:
        return self.path(job_id).resolve().as_uri()

    def append(self, job_id: str, lines: Iterable[tuple[datetime, str, str]]) -> int:
        text = "".join(_format(stamp, stream, line) for stamp, stream, line in lines)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.path(job_id).open("a", encoding="utf-8") as handle:
                handle.write(text)
        return text.count("\n")

    def ensure(self, job_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path(job_id).touch(exist_ok=True)

    def stats(self, job_id: str) -> tuple[int, int]:
        """(size in bytes, number of entries)."""
        path = self.path(job_id)
        if not path.exists():
            return 0, 0
        with path.open("rb") as handle:
            entries = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 16), b""))
        return path.stat().st_size, entries

    def read(self, job_id: str, from_line: int = 1, limit: int | None = None) -> Iterator[LogEntry]:
        path = self.path(job_id)
        if not path.exists():
            return
        with path.open(encoding="utf-8") as handle:
            for number, raw in enumerate(handle, start=1):
                if number < from_line:
                    continue
                if limit is not None and number >= from_line + limit:
                    return
                if raw.endswith("\n"):
                    yield _parse(number, raw)
