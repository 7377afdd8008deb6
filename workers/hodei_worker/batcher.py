"""Groups output into numbered batches, bounded in lines and bytes, and keeps each until
the server acknowledges it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A line (or a piece of a long one), as (wall-clock time, stream, text, partial).
Line = tuple[float, str, str, bool]

MAX_LINES = 1000
# Far below the server's message limit (16 MiB): a batch is never refused for its size.
MAX_BYTES = 1024 * 1024
# A batch sent this many times without an acknowledgement is given up, not resent forever.
MAX_SENDS = 5


@dataclass
class Batch:
    seq: int
    lines: list[Line] = field(default_factory=list)
    # Streams, answered by a server, that ended without this batch acknowledged.
    sends: int = 0


class LogBatcher:
    """Flushes when ``max_lines`` or ``max_bytes`` are waiting, or ``max_delay`` passed
    since the first one.

    Batches stay in ``unacked`` until the server acknowledges them; after a reconnect
    they are sent again (``pending``), and the result waits until none is left.
    """

    def __init__(
        self,
        send: Callable[[Batch], None],
        max_lines: int = MAX_LINES,
        max_delay: float = 0.05,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._send = send
        self.max_lines = max_lines
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self._lock = threading.Condition()
        self._current: list[Line] = []
        self._current_bytes = 0
        self._first_at = 0.0
        self._seq = 0
        self.unacked: dict[int, Batch] = {}
        self.lost_lines = 0
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_on_time, name="log-flusher", daemon=True)
        self._flusher.start()

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(self, stream: str, text: str, partial: bool = False) -> None:
        size = len(text) + 16
        with self._lock:
            if self._current and self._current_bytes + size > self.max_bytes:
                self._flush_locked()
            if not self._current:
                self._first_at = time.monotonic()
                self._lock.notify_all()
            self._current.append((time.time(), stream, text, partial))
            self._current_bytes += size
            if len(self._current) >= self.max_lines:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._current:
            return
        self._seq += 1
        batch = Batch(self._seq, self._current)
        self._current = []
        self._current_bytes = 0
        self.unacked[batch.seq] = batch
        self._send(batch)

    def acked(self, seq: int) -> None:
        with self._lock:
            self.unacked.pop(seq, None)
            self._lock.notify_all()

    def pending(self) -> list[Batch]:
        """The batches to send again on a new stream."""
        with self._lock:
            return [self.unacked[seq] for seq in sorted(self.unacked)]

    def unanswered(self) -> None:
        """A stream the server answered on ended with batches unacknowledged. One that
        went unanswered on ``MAX_SENDS`` such streams is given up (its lines counted as
        lost): a batch the server cannot take must not hold the job's result forever.
        (Streams that never reached a server do not count: an outage is not a refusal.)"""
        with self._lock:
            for seq in sorted(self.unacked):
                batch = self.unacked[seq]
                batch.sends += 1
                if batch.sends > MAX_SENDS:
                    self.lost_lines += len(batch.lines)
                    del self.unacked[seq]
            self._lock.notify_all()

    def wait_all_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flush_locked()
            while self.unacked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _flush_on_time(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._current:
                    self._lock.wait(1.0)
                    continue
                due = self._first_at + self.max_delay - time.monotonic()
                if due > 0:
                    self._lock.wait(due)
                    continue
                self._flush_locked()
