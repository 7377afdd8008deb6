"""Groups output lines into numbered batches and keeps them until acknowledged."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Batch:
    seq: int
    lines: list[tuple[float, str, str]] = field(default_factory=list)


class LogBatcher:
    """Flushes when ``max_lines`` are waiting or ``max_delay`` passed since the first one.

    Batches stay in ``unacked`` until the server acknowledges them; after a reconnect
    they are sent again, and the result waits until none is left.
    """

    def __init__(self, send: Callable[[Batch], None], max_lines: int = 200, max_delay: float = 0.05) -> None:
        self._send = send
        self.max_lines = max_lines
        self.max_delay = max_delay
        self._lock = threading.Condition()
        self._current: list[tuple[float, str, str]] = []
        self._first_at = 0.0
        self._seq = 0
        self.unacked: dict[int, Batch] = {}
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_on_time, name="log-flusher", daemon=True)
        self._flusher.start()

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(self, stream: str, line: str) -> None:
        with self._lock:
            if not self._current:
                self._first_at = time.monotonic()
                self._lock.notify_all()
            self._current.append((time.time(), stream, line))
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
        self.unacked[batch.seq] = batch
        self._send(batch)

    def acked(self, seq: int) -> None:
        with self._lock:
            self.unacked.pop(seq, None)
            self._lock.notify_all()

    def pending(self) -> list[Batch]:
        with self._lock:
            return [self.unacked[seq] for seq in sorted(self.unacked)]

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
