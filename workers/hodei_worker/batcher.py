"""Groups output into numbered batches, bounded in lines and bytes, and keeps each until
the server acknowledges it; holds the job's output back while too much of it waits for
acknowledgements."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Lines read at one time from one stream, as (wall-clock time, stream, texts, partial);
# ``partial`` comes with one text only: a piece of a long line that goes on in the next run.
Run = tuple[float, str, list[str], bool]

MAX_LINES = 1000
# Far below the server's message limit (16 MiB): a batch is never refused for its size.
MAX_BYTES = 1024 * 1024
# A batch sent this many times without an acknowledgement is given up, not resent forever.
MAX_SENDS = 5
# What a line costs in a batch besides its text (its stream, time and framing), roughly.
LINE_BYTES = 16
# Output read and not yet acknowledged, at most: past it the reader waits for the server's
# acknowledgements, and the job's writes wait in its pipe as they would on a slow terminal.
# Without it the agent held all of a flood the server could not take as fast: `yes` grew
# it by 70 MB a second, and a job with a memory limit was killed for the agent's memory.
# (Held as Python objects, a short line costs a few times its accounted bytes.)
MAX_UNACKED_BYTES = 4 * 1024 * 1024


@dataclass
class Batch:
    seq: int
    runs: list[Run] = field(default_factory=list)
    # Its lines' bytes as accounted against ``max_bytes``.
    size: int = 0
    # Streams, answered by a server, that ended without this batch acknowledged.
    sends: int = 0

    @property
    def line_count(self) -> int:
        return sum(len(run[2]) for run in self.runs)


class LogBatcher:
    """Flushes when ``max_lines`` or ``max_bytes`` are waiting, or ``max_delay`` passed
    since the first one.

    Batches stay in ``unacked`` until the server acknowledges them; after a reconnect
    they are sent again (``pending``), and the result waits until none is left. While
    ``max_unacked_bytes`` of them wait, ``add`` waits too (a server away: until it is back,
    or the agent gives up on it and stops the job).
    """

    def __init__(
        self,
        send: Callable[[Batch], None],
        max_lines: int = MAX_LINES,
        max_delay: float = 0.05,
        max_bytes: int = MAX_BYTES,
        max_unacked_bytes: int = MAX_UNACKED_BYTES,
    ) -> None:
        self._send = send
        self.max_lines = max_lines
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self.max_unacked_bytes = max_unacked_bytes
        self._lock = threading.Condition()
        self._current: list[Run] = []
        self._current_lines = 0
        self._current_bytes = 0
        self._first_at = 0.0
        self._seq = 0
        self.unacked: dict[int, Batch] = {}
        self._unacked_bytes = 0
        self.lost_lines = 0
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_on_time, name="log-flusher", daemon=True)
        self._flusher.start()

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(self, stream: str, texts: list[str], partial: bool = False, wait: bool = True) -> None:
        """Takes lines read together; they are split across batches where a batch fills.
        Waits first while ``max_unacked_bytes`` wait for acknowledgements, unless ``wait``
        is false (the agent's own notes from the thread that reads the acknowledgements)."""
        at = time.time()  # when they were read, whatever the wait
        with self._lock:
            while wait and self._unacked_bytes >= self.max_unacked_bytes and not self._closed:
                self._lock.wait()
            while texts:
                taken = self._room_for(texts)
                if not taken:
                    self._flush_locked()
                    continue
                if not self._current:
                    self._first_at = time.monotonic()
                    self._lock.notify_all()
                run, texts = (texts, []) if taken == len(texts) else (texts[:taken], texts[taken:])
                self._current.append((at, stream, run, partial))
                self._current_lines += taken
                self._current_bytes += sum(map(len, run)) + LINE_BYTES * taken
                if self._current_lines >= self.max_lines:
                    self._flush_locked()

    def _room_for(self, texts: list[str]) -> int:
        """How many of ``texts`` fit in the current batch (a line too big for any batch
        goes alone)."""
        fits = texts[: self.max_lines - self._current_lines]
        room = self.max_bytes - self._current_bytes
        if sum(map(len, fits)) + LINE_BYTES * len(fits) <= room:
            return len(fits)
        taken = 0
        for text in fits:
            room -= len(text) + LINE_BYTES
            if room < 0:
                break
            taken += 1
        return taken or int(not self._current)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._current:
            return
        self._seq += 1
        batch = Batch(self._seq, self._current, self._current_bytes)
        self._current = []
        self._current_lines = 0
        self._current_bytes = 0
        self.unacked[batch.seq] = batch
        self._unacked_bytes += batch.size
        self._send(batch)

    def acked(self, seq: int) -> None:
        with self._lock:
            batch = self.unacked.pop(seq, None)
            if batch is not None:
                self._unacked_bytes -= batch.size
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
                    self.lost_lines += batch.line_count
                    self._unacked_bytes -= batch.size
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
