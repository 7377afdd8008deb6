"""Runs the job's command in its own process group and enforces its timeout."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

_PR_SET_CHILD_SUBREAPER = 36


class Outcome(Enum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    START_FAILED = "start_failed"
    WORKER_STOPPED = "worker_stopped"


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    exit_code: int
    message: str
    # Wall-clock seconds since the epoch; None when the process never started.
    started_at: float | None = None
    finished_at: float | None = None


def become_subreaper() -> None:
    """Orphaned grandchildren are re-parented to us (not to init), so we can reap them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def argv_for(command: str, args: Sequence[str]) -> list[str]:
    """A command alone is a shell command line; a command with args is a program."""
    return [command, *args] if args else ["/bin/sh", "-c", command]


# The agent's settings the job must not see (the token is a credential).
_PRIVATE = ("HODEI_WORKER_TOKEN", "HODEI_SERVER_ADDRESS", "HODEI_KILL_GRACE")


def job_environment(agent_env: Mapping[str, str], job_env: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment minus its private settings, plus the job's variables.
    HODEI_JOB_ID and HODEI_WORKER_ID stay: jobs may use them, and they mark the job's
    processes as belonging to this worker."""
    env = {key: value for key, value in agent_env.items() if key not in _PRIVATE}
    env.update(job_env)
    return env


def exit_code_of(returncode: int) -> int:
    """Shell convention: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class JobProcess:
    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        working_dir: str | None,
        timeout: float,
        kill_grace: float,
        on_line: Callable[[str, str], None],
    ) -> None:
        self.argv = argv
        self.env = dict(env)
        self.working_dir = working_dir
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.on_line = on_line
        self._interrupted: Outcome | None = None
        # Set on cancel and when the process exits: the wait loop sleeps on it.
        self._wake = threading.Event()
        self._exited = threading.Event()
        self._cancel_reason = ""
        self._process: subprocess.Popen[bytes] | None = None

    def cancel(self, reason: str) -> None:
        self.interrupt(Outcome.CANCELLED, f"cancelled: {reason}")

    def interrupt(self, outcome: Outcome, reason: str) -> None:
        """Stops the job (SIGTERM, grace, SIGKILL) and reports ``outcome``."""
        if self._interrupted is None:
            self._cancel_reason = reason
            self._interrupted = outcome
        self._wake.set()

    def run(self) -> Finished:
        started_at = time.time()
        try:
            if self.working_dir:
                os.makedirs(self.working_dir, exist_ok=True)
            process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.working_dir or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            return Finished(Outcome.START_FAILED, code, f"cannot start {self.argv[0]}: {exc.strerror or exc}")
        self._process = process
        readers = [
            threading.Thread(target=self._pump, args=(process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, "stderr"), daemon=True),
        ]
        for reader in readers:
            reader.start()
        reaper = threading.Thread(target=self._reap_orphans, args=(process,), daemon=True)
        reaper.start()
        outcome, message = self._wait(process)
        finished_at = time.time()
        # Whatever the job left behind in its process group goes too: it would hold the
        # output pipes open and outlive the job.
        self._signal_group(process.pid, signal.SIGKILL)
        for reader in readers:
            reader.join(timeout=5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        returncode = process.returncode if process.returncode is not None else -signal.SIGKILL
        reap_all()
        code = exit_code_of(returncode)
        if outcome is Outcome.EXITED:
            message = "exited with code 0" if code == 0 else f"exited with code {code}"
        return Finished(outcome, code, message, started_at, finished_at)

    def _wait(self, process: subprocess.Popen[bytes]) -> tuple[Outcome, str]:
        deadline = time.monotonic() + self.timeout
        watcher = threading.Thread(target=self._watch_exit, args=(process,), daemon=True)
        watcher.start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop(process)
                return Outcome.TIMED_OUT, f"timed out after {self.timeout:g}s"
            self._wake.wait(remaining)
            self._wake.clear()
            if self._exited.is_set():
                process.wait()
                return Outcome.EXITED, ""
            if self._interrupted is not None:
                self._stop(process)
                return self._interrupted, self._cancel_reason

    def _watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        """Blocks until the job's process exits (no polling delay), then wakes the wait.
        WNOWAIT leaves the exit status for subprocess to collect. (Popen.poll() from two
        threads can answer None while the other holds its lock: never rely on it here.)"""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        self._exited.set()
        self._wake.set()

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the whole group, a grace period, then SIGKILL."""
        self._signal_group(process.pid, signal.SIGTERM)
        if not self._exited.wait(self.kill_grace):
            self._signal_group(process.pid, signal.SIGKILL)
            self._exited.wait()
        process.wait()

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def _pump(self, stream: object, name: str) -> None:
        assert hasattr(stream, "readline")
        for raw in iter(stream.readline, b""):
            self.on_line(name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def _reap_orphans(self, process: subprocess.Popen[bytes]) -> None:
        """Reaps re-parented orphans while the job runs, never the job's own process
        (subprocess must collect its exit status)."""
        while not self._exited.is_set():
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is not None and info.si_pid not in (0, process.pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.si_pid, 0)
                continue
            time.sleep(0.2)


def reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
