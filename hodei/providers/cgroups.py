"""One cgroup (v2) per local worker: every process the worker starts stays in it, even one
that leaves its session or process group, so destroying the worker can kill them all
(``cgroup.kill``), and strays are found after a restart by listing the directories.

A job's ``--memory`` and ``--cpu`` are limits of that group where cgroup v2 has the memory
and cpu controllers (``memory.max``, ``cpu.max``), or, on hybrid hosts whose controllers
are bound to cgroup v1 (ours), of a group of the same name in the v1 memory and cpu
hierarchies (``memory.limit_in_bytes``, ``cpu.cfs_quota_us``) that the worker enters too.
A limit that no controller here can enforce is refused, never ignored. The provider's
limit of processes a worker (HODEI_WORKER_MAX_PROCESSES) is its group's ``pids.max``, in
either hierarchy, where a pids controller is: a fork bomb in one job then fails its own
forks, not every process of the host's (the server's threads among them).

Used by the local provider where a writable cgroup v2 hierarchy exists (as root, on
hosts with cgroup2 mounted); elsewhere it tracks the agent's process group only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from hodei_worker.runner import MemoryGroup

from hodei.errors import ProviderError
from hodei.providers.base import LEAST_CPU_CORES

log = logging.getLogger(__name__)
_MOUNTS = Path("/proc/self/mounts")
# The controllers the limits need, and the CFS period a CPU quota is a share of.
LIMITED = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


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


def cgroup1_roots() -> dict[str, Path]:
    """The cgroup v1 hierarchies of the controllers in LIMITED that this process may create
    groups in, by controller (``/sys/fs/cgroup/memory``...)."""
    try:
        lines = _MOUNTS.read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and os.access(fields[1], os.W_OK):
            for controller in set(fields[3].split(",")) & set(LIMITED):
                found[controller] = Path(fields[1])
    return found


def limits_wanted(cpu_cores: float, memory_bytes: int) -> list[str]:
    """The controllers a job's limits need (0 is the provider's default: no limit)."""
    return [controller for controller, value in (("memory", memory_bytes), ("cpu", cpu_cores)) if value > 0]


def unenforceable(controllers: list[str]) -> ProviderError:
    """A job's limit this host cannot set: refused, not ignored."""
    flags = " and ".join(f"--{controller}" for controller in controllers)
    return ProviderError(
        f"this host cannot enforce {flags} on local workers (no writable cgroup {' or '.join(controllers)} "
        "controller); submit without it, or to a docker or kubernetes provider"
    )


def v2_controllers(root: Path) -> set[str]:
    try:
        return set((root / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


class WorkerCgroups:
    """``<root>/hodei-<installation>/<worker id>``, one per worker; ``v1_roots`` are the
    controllers cgroup v2 lacks here (``cgroup1_roots()``), each limited in a group
    ``<v1 root>/hodei-<installation>/<worker id>``."""

    def __init__(
        self, root: Path, installation: str, v1_roots: Mapping[str, Path] | None = None, processes: int = 0
    ) -> None:
        """``processes``: at most so many processes and threads in a worker's group (0:
        no limit), where a pids controller is."""
        self.root = root
        self.processes = processes
        self.base = root / f"hodei-{installation}"
        in_v2 = v2_controllers(root) & set(LIMITED)
        self.v1_bases = {
            controller: path / self.base.name
            for controller, path in (v1_roots or {}).items()
            if controller in LIMITED and controller not in in_v2
        }
        # Where each limit is set: the worker's own v2 group (its base) or a v1 group's.
        self.limit_bases = {**dict.fromkeys(in_v2, self.base), **self.v1_bases}

    def path(self, worker_id: str) -> Path:
        return self.base / worker_id

    def create(self, worker_id: str, cpu_cores: float = 0.0, memory_bytes: int = 0) -> list[Path]:
        """Makes the worker's groups with its limits; returns the ``cgroup.procs`` files
        its agent must enter (the v2 group's first). A limit no controller here can set
        is refused before anything is made. Where a memory controller is, the worker is
        in a memory group with or without a limit: its agent reads its OOM kills and
        peak there (and nobody else's)."""
        wanted = limits_wanted(cpu_cores, memory_bytes)
        missing = [controller for controller in wanted if controller not in self.limit_bases]
        if missing:
            raise unenforceable(missing)
        path = self.path(worker_id)
        path.mkdir(parents=True, exist_ok=True)
        procs = [path / "cgroup.procs"]
        limits = {"memory": str(memory_bytes) if memory_bytes > 0 else None, "cpu": None, "pids": None}
        if cpu_cores > 0:
            limits["cpu"] = str(round(max(cpu_cores, LEAST_CPU_CORES) * CPU_PERIOD_US))
        if self.processes:
            limits["pids"] = str(self.processes)
        joined = [
            controller
            for controller in LIMITED
            if controller in self.limit_bases and (controller == "memory" or limits[controller] is not None)
        ]
        for controller in joined:
            try:
                procs.extend(self._join(controller, worker_id, limits[controller]))
            except OSError as exc:
                if limits[controller] is not None:
                    self.kill(worker_id)
                    raise ProviderError(f"cannot set the {controller} limit of worker {worker_id}: {exc}") from exc
                # Accounting only: the job runs all the same, its usage unmeasured.
                log.warning("worker %s has no %s group of its own: %s", worker_id, controller, exc)
        return procs

    def _join(self, controller: str, worker_id: str, limit: str | None) -> list[Path]:
        """The worker's group of ``controller``, with its limit if there is one (a CPU
        quota in microseconds a period); the ``cgroup.procs`` to enter besides the v2
        group's."""
        v1_base = self.v1_bases.get(controller)
        v2 = v1_base is None
        if v1_base is None:  # cgroup v2: the controller enabled for the workers, the limit in the worker's group
            for parent in (self.root, self.base):
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
            group, entered = self.path(worker_id), []
        else:
            group = v1_base / worker_id
            group.mkdir(parents=True, exist_ok=True)
            entered = [group / "cgroup.procs"]
        if limit is None:
            return entered
        if controller == "memory":
            files = {"memory.max" if v2 else "memory.limit_in_bytes": limit}
        elif controller == "pids":
            files = {"pids.max": limit}
        elif v2:
            files = {"cpu.max": f"{limit} {CPU_PERIOD_US}"}
        else:
            files = {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": limit}
        for name, value in files.items():
            (group / name).write_text(value)
        return entered

    def oom_kills(self, worker_id: str) -> int:
        """How many of the worker's processes the kernel's OOM killer has killed (0 where
        it has no memory group), read as its agent reads it."""
        base = self.limit_bases.get("memory")
        if base is None:
            return 0
        group = self.path(worker_id) if base == self.base else base / worker_id
        return MemoryGroup(str(group), v2="memory" not in self.v1_bases).oom_kills() or 0

    def limits(self) -> str:
        """What the provider's health says of limits."""
        flags = [f"--{controller}" for controller in ("memory", "cpu") if controller in self.limit_bases]
        said = " and ".join(flags) + " enforced" if flags else "no --cpu/--memory limits"
        if self.processes:
            held = "pids" in self.limit_bases
            said += (
                f", at most {self.processes} processes a worker"
                if held
                else ", no limit of processes (no pids controller)"
            )
        return said

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
        """SIGKILLs every process in the group (none can escape it), then removes its
        groups once they are empty: a group whose last processes are still exiting is
        busy (EBUSY) for a moment after ``cgroup.procs`` stops listing them."""
        path = self.path(worker_id)
        if not path.exists():
            return
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        for group in (path, *(base / worker_id for base in self.v1_bases.values())):
            while True:
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        log.warning("cannot remove %s (%s); the reconciler tries again later", group, exc.strerror)
                        break
                    time.sleep(0.02)

    def forget_if_empty(self) -> None:
        """Removes the installation's directories when no worker group is left in them."""
        for base in (self.base, *self.v1_bases.values()):
            with contextlib.suppress(OSError):
                base.rmdir()
