"""The local provider: each worker is a process on the server's own host.

It is the engine of the fast test suite and the fallback where no Docker engine
runs. A worker process and every process of its job carry ``HODEI_WORKER_ID`` in
their environment; that marker (with the installation id) is how strays are found
after a restart, the way labels work for containers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hodei.domain.provider import ProviderType
from hodei.errors import ProviderError
from hodei.providers.base import Health, Observation, WorkerLaunch, WorkerProvider

_MARK = "HODEI_INSTALLATION"


@dataclass(frozen=True)
class _Seen:
    pid: int
    worker_id: str
    job_id: str | None
    is_agent: bool


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LocalProvider(WorkerProvider):
    provider_type = ProviderType.LOCAL

    def __init__(
        self, installation: str, worker_command: Sequence[str] | None, log_dir: Path, kill_grace: float = 5.0
    ) -> None:
        self.installation = installation
        self.worker_command = list(worker_command or [sys.executable, "-m", "hodei_worker.agent"])
        self.log_dir = log_dir / "workers"
        self.kill_grace = kill_grace
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def create_worker(self, launch: WorkerLaunch) -> str:
        with self._lock:
            existing = self._children.get(launch.worker_id)
            if existing is not None:
                return f"pid-{existing.pid}"
            for seen in self._scan():
                if seen.worker_id == launch.worker_id and seen.is_agent:
                    return f"pid-{seen.pid}"
            self.log_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **launch.env, _MARK: self.installation}
            try:
                with (self.log_dir / f"{launch.worker_id}.log").open("ab") as output:
                    child = subprocess.Popen(
                        self.worker_command,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            except OSError as exc:
                raise ProviderError(f"cannot start the worker process {self.worker_command[0]}: {exc}") from exc
            self._children[launch.worker_id] = child
            return f"pid-{child.pid}"

    def destroy_worker(self, worker_id: str) -> None:
        """SIGTERM to the agent and the job's processes, then SIGKILL after the grace."""
        with self._lock:
            child = self._children.pop(worker_id, None)
        pids = {seen.pid for seen in self._scan() if seen.worker_id == worker_id}
        if child is not None and child.poll() is None:
            pids.add(child.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)

    def observe(self) -> list[Observation]:
        found: dict[str, Observation] = {}
        for seen in self._scan():
            if seen.is_agent:
                found[seen.worker_id] = Observation(seen.worker_id, seen.job_id, f"pid-{seen.pid}", running=True)
        with self._lock:
            children = dict(self._children)
        for worker_id, child in children.items():
            code = child.poll()
            if code is not None:
                found[worker_id] = Observation(
                    worker_id,
                    None,
                    f"pid-{child.pid}",
                    running=False,
                    failure=f"worker process exited with code {code}",
                )
        return list(found.values())

    def health(self) -> Health:
        return Health(True, f"workers run as `{' '.join(self.worker_command)}` on this host")

    def close(self) -> None:
        with self._lock:
            self._children.clear()

    def _scan(self) -> list[_Seen]:
        """Processes of this installation's workers (agents, and their jobs' processes)."""
        seen = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            env = _environ(pid)
            worker_id = env.get("HODEI_WORKER_ID")
            if worker_id is None or env.get(_MARK) != self.installation or not _alive(pid):
                continue
            # Only the agent holds the token; the agent strips it from the job's environment.
            seen.append(_Seen(pid, worker_id, env.get("HODEI_JOB_ID"), "HODEI_WORKER_TOKEN" in env))
        return seen
