"""A job's disk limit (``--disk``) where the provider itself sees to it: the local provider
(the job's home) and Docker (the container's writable layer). Kubernetes leaves it to the
kubelet, through the pod's ephemeral-storage limit.

Like a kubelet's eviction manager, this measures every ``CHECK_EVERY`` seconds, on a thread
of its own (a measure walks files, a Docker engine's too, and must not hold the sweeper):
a job can write past its limit in between by as much as it writes in that time. A worker
past its limit is stopped as a deleted one is (SIGTERM, so the agent reports the job
stopped), and the provider gives the reason when asked why (``why``)."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hodei.domain.phases import size_text
from hodei.logfields import about

log = logging.getLogger(__name__)

CHECK_EVERY = 2.0
# The longest one measure of a tree may take (a tree of millions of files on a slow disk).
DU_TIMEOUT = 60.0


@dataclass(frozen=True)
class DiskUse:
    """What one worker with a limit holds now. ``where``: what was measured, for people."""

    worker_id: str
    used: int
    limit: int
    where: str


def tree_bytes(path: str) -> int:
    """The disk a directory tree holds, as ``du`` counts it (allocated blocks, a file of
    several links once, links not followed, one file system); 0 for a tree that is gone.
    ``du`` itself, not a walk in Python: a job's million files would hold the server's
    interpreter lock for seconds at every check."""
    try:
        done = subprocess.run(
            ["du", "-s", "-x", "-B1", "--", path], capture_output=True, text=True, timeout=DU_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("du of %s: %s", path, exc)
        return 0
    # It exits 1 when some file could not be read (removed meanwhile) and still says the total.
    total, _, _ = done.stdout.partition("\t")
    return int(total) if total.isdigit() else 0


class DiskWatch:
    """Stops the workers ``measure`` finds past their limits (``stop``: the provider's
    SIGTERM to the worker), once each, and keeps why until the worker is forgotten."""

    def __init__(self, provider: str, measure: Callable[[], Iterable[DiskUse]], stop: Callable[[str], None]) -> None:
        self.provider = provider
        self._measure = measure
        self._stop = stop
        self._over: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """From the first worker with a limit on: a provider without any runs no thread."""
        with self._lock:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name=f"hodei-{self.provider}-disk", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(CHECK_EVERY):
            try:
                self.check()
            except Exception as exc:  # an engine away: the next round tries again
                log.warning("%s provider: the disk of its workers was not measured: %s", self.provider, exc)

    def check(self) -> None:
        for use in self._measure():
            if use.limit <= 0 or use.used <= use.limit:
                continue
            with self._lock:
                if use.worker_id in self._over:
                    continue
                reason = (
                    f"{use.where} held {size_text(use.used)}, past the job's disk limit of {size_text(use.limit)}"
                    " (--disk)"
                )
                self._over[use.worker_id] = reason
            with about(worker_id=use.worker_id):
                log.warning("worker %s: %s: stopping it", use.worker_id, reason)
                try:
                    self._stop(use.worker_id)
                except Exception as exc:  # an engine away: stopped at a later round
                    log.warning("worker %s was not stopped past its disk limit: %s", use.worker_id, exc)
                    with self._lock:
                        self._over.pop(use.worker_id, None)

    def why(self, worker_id: str) -> str | None:
        with self._lock:
            return self._over.get(worker_id)

    def forget(self, worker_id: str) -> None:
        with self._lock:
            self._over.pop(worker_id, None)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(CHECK_EVERY + 5)
