"""The server's side of ``hodei_worker.template``: one started agent that the local
provider forks its workers from.

An agent started from nothing spends about 170 ms of CPU importing grpcio and
protobuf before its first call; a fork of the template, which has imported them
already, connects within a few milliseconds. The template is started on the first
worker and again if it ever ends; its children outlive it (and this server), as
exec'd agents do.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from hodei.errors import ProviderError
from hodei.providers.helpers import send, stop

log = logging.getLogger(__name__)

# How long a fork may take to be answered before the template is deemed stuck.
FORK_TIMEOUT = 10.0
# A child whose exit the template could not report (the template itself ended first).
CODE_LOST = -1


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def agent_python() -> tuple[list[str], dict[str, str]]:
    """How this server's Python starts the agent, and the environment that needs: without
    ``site`` (``-S``), its imports found through PYTHONPATH — the agent's and hodei's
    packages, then the site directories this server imports from (a venv's, the
    system's, the user's). Processing ``site`` (and an editable install's import hook)
    was about a tenth of the agent's start."""
    found = [importlib.util.find_spec(name) for name in ("hodei_worker", "hodei")]
    packages = [str(Path(spec.origin).parent.parent) for spec in found if spec is not None and spec.origin]
    sites = [entry for entry in sys.path if entry.endswith(("site-packages", "dist-packages"))]
    return [sys.executable, "-S"], {"PYTHONPATH": os.pathsep.join(dict.fromkeys([*packages, *sites]))}


class AgentTemplate:
    @classmethod
    def of_this_python(cls, env: Mapping[str, str]) -> AgentTemplate:
        """``hodei_worker.template`` run by this server's Python (``agent_python``), with
        ``env`` beside the PYTHONPATH that needs."""
        python, paths = agent_python()
        return cls([*python, "-m", "hodei_worker.template"], {**paths, **env})

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.command = list(command)
        self.env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._codes: dict[int, int] = {}
        self._exits = threading.Condition()
        self._lock = threading.Lock()

    def fork(self, worker_id: str, env: Mapping[str, str], output: Path, cgroup_procs: Sequence[Path]) -> ForkedAgent:
        """A new agent process for this worker, with exactly this environment."""
        request = {
            "worker": worker_id,
            "env": dict(env),
            "output": str(output),
            "cgroups": [str(procs) for procs in cgroup_procs],
        }
        name = f"the agent template ({' '.join(self.command)})"
        with self._lock:
            process = self._running()
            send(process, request, name)
            try:
                reply = self._replies.get(timeout=FORK_TIMEOUT)
            except queue.Empty as exc:
                stop(process)
                raise ProviderError(f"{name} did not start the worker within {FORK_TIMEOUT:.0f} s") from exc
            if reply is None:
                raise ProviderError(f"{name} ended; see the server's stderr", retryable=True)
            if "error" in reply:
                raise ProviderError(reply["error"])
            return ForkedAgent(int(reply["pid"]), self, process)

    @property
    def pid(self) -> int | None:
        """The template process's, while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def exit_code(self, pid: int) -> int | None:
        with self._exits:
            return self._codes.get(pid)

    def wait_exit(self, pid: int, process: subprocess.Popen[bytes], timeout: float) -> int | None:
        """The child's code once reported, or None at the timeout or at its template's end."""
        with self._exits:
            self._exits.wait_for(lambda: pid in self._codes or process.poll() is not None, timeout)
            return self._codes.get(pid)

    def close(self) -> None:
        """Ends the template (its input closes); the agents it started keep running."""
        with self._lock:
            if self._process is not None:
                stop(self._process)
                self._process = None

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is not None:
            if self._process.poll() is None:
                return self._process
            stop(self._process)
        try:
            process = subprocess.Popen(
                self.command, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            raise ProviderError(f"cannot start the agent template {self.command[0]}: {exc}") from exc
        self._process = process
        self._replies = queue.Queue()
        assert process.stdout is not None
        threading.Thread(
            target=self._read, args=(process.stdout, self._replies), name="agent-template", daemon=True
        ).start()
        return process

    def _read(self, stdout: IO[bytes], replies: queue.Queue[dict[str, Any] | None]) -> None:
        with stdout:
            for line in stdout:
                message = orjson.loads(line)
                if "exited" in message:
                    with self._exits:
                        self._codes[int(message["exited"])] = int(message["code"])
                        self._exits.notify_all()
                else:
                    if "pid" in message:
                        # A pid is reused in time: an earlier child's code is not this one's.
                        with self._exits:
                            self._codes.pop(int(message["pid"]), None)
                    replies.put(message)
        log.info("the agent template ended")
        replies.put(None)
        with self._exits:
            self._exits.notify_all()


class ForkedAgent:
    """What the provider keeps of a worker's agent: a ``Popen``'s pid, poll and wait."""

    def __init__(self, pid: int, template: AgentTemplate, parent: subprocess.Popen[bytes]) -> None:
        self.pid = pid
        self.template = template
        # The template process that forked it: once that has ended, no code will come.
        self.parent = parent

    def poll(self) -> int | None:
        code = self.template.exit_code(self.pid)
        if code is None and self.parent.poll() is not None and not alive(self.pid):
            return CODE_LOST
        return code

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        self.template.wait_exit(self.pid, self.parent, timeout)
        # Once the template has ended, only /proc can tell.
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if code is None:
            raise subprocess.TimeoutExpired(f"agent {self.pid}", timeout)
        return code
