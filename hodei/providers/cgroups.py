"""One cgroup (v2) per local worker: every process the worker starts stays in it, even one
that leaves its session or process group, so destroying the worker can kill them all
(``cgroup.kill``), and strays are found after a restart by listing the directories.

Used by the local provider where a writable cgroup v2 hierarchy exists (as root, on
hosts with cgroup2 mounted); elsewhere it tracks the agent's process group only.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

_MOUNTS = Path("/proc/self/mounts")


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid hosts,
    ``/sys/fs/cgroup/unified``), if this process may create groups in it."""
    try:
        lines = _MOUNTS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            root = Path(fields[1])
            if os.access(root, os.W_OK):
                return root
    return None


class WorkerCgroups:
    """``<root>/hodei-<installation>/<worker id>``, one per worker."""

    def __init__(self, root: Path, installation: str) -> None:
        self.base = root / f"hodei-{installation}"

    def path(self, worker_id: str) -> Path:
        return self.base / worker_id

    def create(self, worker_id: str) -> Path:
        path = self.path(worker_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def enter(self, worker_id: str) -> None:
        """Moves the calling process into the worker's group (in a child before exec:
        plain system calls only)."""
        fd = os.open(self.path(worker_id) / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def pids(self, worker_id: str) -> list[int]:
        try:
            text = (self.path(worker_id) / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def age(self, worker_id: str) -> float:
        """Seconds since the group was made."""
        try:
            return time.time() - self.path(worker_id).stat().st_ctime
        except OSError:
            return 0.0

    def workers(self) -> list[str]:
        try:
            return [entry.name for entry in self.base.iterdir() if entry.is_dir()]
        except OSError:
            return []

    def kill(self, worker_id: str, timeout: float = 5.0) -> None:
        """SIGKILLs every process in the group (none can escape it), waits until it is
        empty, then removes it."""
        path = self.path(worker_id)
        if not path.exists():
            return
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        while self.pids(worker_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            path.rmdir()

    def forget_if_empty(self) -> None:
        """Removes the installation's directory when no worker group is left in it."""
        with contextlib.suppress(OSError):
            self.base.rmdir()
