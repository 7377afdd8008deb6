"""Runs the job's command in its own process group and enforces its timeout."""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import pwd
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

from hodei_worker.masking import Masker

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
# How long the processes a job left behind get to die once SIGKILLed (end_strays): one
# in the kernel's uninterruptible sleep cannot, and is left.
_STRAYS_DIE_WITHIN = 2.0
STDOUT = "stdout"
STDERR = "stderr"
# The longest piece of a line handed on at once; longer lines go in several pieces.
PIECE_BYTES = 256 * 1024


class Outcome(Enum):
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    START_FAILED = "start_failed"
    WORKER_STOPPED = "worker_stopped"


def start_failure(exc: OSError, argv0: str, working_dir: str | None) -> tuple[int, str]:
    """Why a command could not start, and its code (127: no such program, 126: not
    executable), as `docker run` and a shell say them."""
    code = 127 if isinstance(exc, FileNotFoundError) else 126
    if working_dir and exc.filename == working_dir:
        return code, f"cannot use working directory {working_dir}: {exc.strerror}"
    return code, f"cannot start {argv0}: {exc.strerror or exc}"


@dataclass(frozen=True)
class Beside:
    """How a command run beside the job's ended (`job exec`), and what it printed: the
    first bytes of each stream, and how many it printed in all."""

    exit_code: int
    message: str
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_bytes: int = 0
    stderr_bytes: int = 0


# The answer to a command asked for while the job's own does not run (yet, or any more).
NOT_RUNNING = Beside(126, "not started: the job's command is not running")


class _Kept:
    """The first ``most`` bytes of a stream, read to its end (a command blocked on a full
    pipe would never end), and how many there were."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.data = bytearray()
        self.total = 0

    def read(self, stream: BinaryIO) -> None:
        fd = stream.fileno()
        while chunk := os.read(fd, PIECE_BYTES):
            self.total += len(chunk)
            if len(self.data) < self.most:
                self.data += chunk[: self.most - len(self.data)]


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    exit_code: int
    message: str
    # Wall-clock seconds since the epoch; None when the process never started.
    started_at: float | None = None
    finished_at: float | None = None
    # What it used: the CPU seconds of its processes (every one the agent reaped, orphans
    # too: it is their subreaper), and its worker's peak memory (its memory cgroup's, the
    # agent's few MB included: a process's own peak is not to be had, as one exec'd from
    # the agent starts with the agent's). None when unknown.
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None


def become_subreaper() -> None:
    """Orphaned grandchildren are re-parented to us (not to init), so we can reap them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def is_subreaper() -> bool:
    """Whether this process is an agent (``become_subreaper``): then every child it has is
    one of the job's processes, or an orphan of them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0:
            return flag.value != 0
    return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc's lists of each thread's children (a
    subreaper's orphans hang from any of its threads); none where the kernel keeps no
    such lists (CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{parent}/task/{task}/children") as listing:
                    children = [int(child) for child in listing.read().split()]
                    found += children
                    parents += children
    return found


def end_strays() -> None:
    """SIGKILLs whatever the job's command left running once it ended — a process that
    left its group (``setsid``, a daemon's double fork) too, which the group's SIGKILL
    misses — and reaps it, as a container's end ends every process in it. Such a process
    would otherwise outlive the job and hold its output open (the agent waited for it).
    Only in an agent (``is_subreaper``): elsewhere a child may be anyone's."""
    if not is_subreaper():
        return
    deadline = time.monotonic() + _STRAYS_DIE_WITHIN
    while strays := descendants(os.getpid()):
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        reap_all()
        if time.monotonic() > deadline:
            return
        time.sleep(0.005)


# glibc's mallopt parameters, and the values bulk transfers want (reuse_freed_memory).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024
_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024


def reuse_freed_memory() -> None:
    """Lets glibc keep freed memory of up to a few MiB for the next allocation. An
    artifact moves in pieces of 3 MiB, and each piece is copied several times (the file's
    read, protobuf, gRPC); by default each copy above 128 KiB is a fresh mapping, or the
    heap's top given back to the kernel at each free, so every copy page-faults all of its
    pages in again. Measured reading a 256 MiB artifact: the server's CPU 112 ms user and
    394 ms system -> 129 and 105 ms, the read 530 -> 288 ms. At most 32 MiB freed is kept
    (beyond it the heap's top is trimmed as before). Nothing is done where the C library
    has no mallopt (musl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


@dataclass(frozen=True)
class MemoryGroup:
    """The worker's own memory cgroup, whose counters count its processes alone: a local
    worker's group (named after the worker, in the host's hierarchy), or the container's
    of an agent that is its PID 1 (its hierarchy's root is its own group). cgroup v2, or v1."""

    path: str
    v2: bool

    @classmethod
    def of_worker(cls, worker_id: str) -> MemoryGroup | None:
        found = []
        with contextlib.suppress(OSError), open("/proc/self/cgroup") as groups:
            for line in groups:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if not worker_id or not path.rstrip("/").endswith(f"/{worker_id}"):
                    continue
                if not controllers:
                    found.append(cls(f"/sys/fs/cgroup{path}", v2=True))
                elif "memory" in controllers.split(","):
                    found.append(cls(f"/sys/fs/cgroup/memory{path}", v2=False))
        if os.getpid() == 1:
            found += [cls("/sys/fs/cgroup", v2=True), cls("/sys/fs/cgroup/memory", v2=False)]
        return next((group for group in found if os.path.exists(group._counters)), None)

    @property
    def _counters(self) -> str:
        return f"{self.path}/{'memory.events' if self.v2 else 'memory.oom_control'}"

    def oom_kills(self) -> int | None:
        """How many processes the kernel's OOM killer has killed in the group."""
        with contextlib.suppress(OSError, ValueError), open(self._counters) as counters:
            for line in counters:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return None

    def memory_now(self) -> int | None:
        """The memory the group holds now (its page cache included)."""
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        with contextlib.suppress(OSError, ValueError), open(f"{self.path}/{name}") as current:
            return int(current.read())
        return None

    def peak_bytes(self) -> int | None:
        """The most memory the group held at once (its page cache included, as its limit
        counts it); None where the kernel does not say (cgroup v2 before Linux 5.19)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError), open(f"{self.path}/{name}") as peak:
            return int(peak.read())
        return None


@dataclass(frozen=True)
class CpuCounter:
    """The file that counts the CPU time of the worker's processes: its group's
    ``cpu.stat`` in cgroup v2, which every group has whatever its controllers, wherever
    cgroup2 is mounted (a hybrid host's /sys/fs/cgroup/unified: ours, where the local
    provider's limits are v1's); or, for an agent that is its container's PID 1, its
    container's (v1's ``cpuacct.usage`` first: there, a cgroup2 mount may be the host's)."""

    path: str
    v2: bool

    @classmethod
    def of_worker(cls, worker_id: str) -> CpuCounter | None:
        v2_mounts, cpuacct_mounts = [], []
        with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
            for line in mounts:
                _, point, kind, options, *_ = line.split()
                if kind == "cgroup2":
                    v2_mounts.append(point)
                elif kind == "cgroup" and "cpuacct" in options.split(","):
                    cpuacct_mounts.append(point)
        found = []
        with contextlib.suppress(OSError), open("/proc/self/cgroup") as groups:
            for line in groups:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if worker_id and path.rstrip("/").endswith(f"/{worker_id}") and not controllers:
                    found += [cls(f"{point}{path}/cpu.stat", v2=True) for point in v2_mounts]
        if os.getpid() == 1:
            found += [cls(f"{point}/cpuacct.usage", v2=False) for point in cpuacct_mounts]
            found += [cls(f"{point}/cpu.stat", v2=True) for point in v2_mounts]
        return next((counter for counter in found if os.path.exists(counter.path)), None)

    def seconds(self) -> float | None:
        """The CPU time the processes have used so far."""
        with contextlib.suppress(OSError, ValueError), open(self.path) as counted:
            if not self.v2:
                return int(counted.read()) / 1e9
            for line in counted:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        return None


class UsageSampler:
    """What the job's processes use now, said with each heartbeat (``job top``): the CPU
    cores used on average since the last sample, and the memory held; read from the
    worker's cgroups, found once they are there (a forked agent is moved into its own)."""

    def __init__(self, worker_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker_id = worker_id
        self.clock = clock
        self.memory: MemoryGroup | None = None
        self.cpu: CpuCounter | None = None
        self._last: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def sample(self) -> tuple[float | None, int | None]:
        with self._lock:
            self.memory = self.memory or MemoryGroup.of_worker(self.worker_id)
            self.cpu = self.cpu or CpuCounter.of_worker(self.worker_id)
            used, now = self.cpu.seconds() if self.cpu else None, self.clock()
            cores = None
            if used is not None:
                if self._last is not None and now > self._last[1]:
                    cores = max(0.0, (used - self._last[0]) / (now - self._last[1]))
                self._last = (used, now)
            return cores, self.memory.memory_now() if self.memory else None


def argv_for(command: str, args: Sequence[str]) -> list[str]:
    """A command alone is a shell command line; a command with args is a program."""
    return [command, *args] if args else ["/bin/sh", "-c", command]


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_DUMPABLE = 4


def remove_home(path: str) -> None:
    """A job's home goes with its job: what it holds, or the link the job put in its place
    (rmtree follows none: what it led to stays)."""
    if os.path.islink(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    shutil.rmtree(path, ignore_errors=True)


def home_name(worker_id: str) -> str:
    """The name of a job's home directory: its worker's, so that the local provider
    removes it when it destroys the worker, though an agent killed first could not."""
    return f"hodei-worker-{worker_id}"


# The file in the job's home that $HODEI_OUTPUT names (hodei_worker.outputs).
OUTPUT_FILE = ".hodei-output"


def job_environment(
    job_id: str,
    worker_id: str,
    attempt: int,
    home: str,
    env: Mapping[str, str],
    secrets: Mapping[str, str],
    after_outputs: str = "",
) -> dict[str, str]:
    """Exactly the job's own variables and secrets over a minimal base: never the
    agent's (its credentials) nor, through it, the server's. TMPDIR is the job's home, so
    that what mktemp and tempfile make is the job's alone and goes with its home (on the
    local provider /tmp is the host's, shared by every job and kept). ``attempt``: 0 from
    a server that does not say it. ``after_outputs``: where the outputs of the jobs it
    starts after are ("": it starts after none)."""
    base = {"PATH": DEFAULT_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    platform = {"HODEI_JOB_ID": job_id, "HODEI_WORKER_ID": worker_id, "HODEI_OUTPUT": os.path.join(home, OUTPUT_FILE)}
    if attempt > 0:
        platform["HODEI_ATTEMPT"] = str(attempt)
    if after_outputs:  # a job started after others: their outputs, a directory each
        platform["HODEI_AFTER_OUTPUTS"] = after_outputs
    return {**base, **env, **secrets, **platform}


def hide_from_jobs() -> None:
    """Makes this process non-dumpable: its /proc files (environ, memory) then belong to
    root, so a job running as the same user cannot read the agent's credentials."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


@dataclass(frozen=True)
class JobUser:
    """The account a job runs as when the agent may switch (it runs as root)."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, value: str) -> JobUser:
        """A user name, ``uid`` or ``uid:gid``."""
        name, _, group = value.partition(":")
        if name.isdigit():
            uid = int(name)
            gid = int(group) if group.isdigit() else uid
            return cls(uid, gid)
        entry = pwd.getpwnam(name)
        return cls(entry.pw_uid, int(group) if group.isdigit() else entry.pw_gid)

    def _may(self, path: str, mask: int) -> bool:
        return self.allows(os.stat(path), mask)

    def allows(self, info: os.stat_result, mask: int) -> bool:
        """Whether a file's permission bits give this user ``mask`` (r=4, w=2, x=1)."""
        if self.uid == 0:
            return True
        if info.st_uid == self.uid:
            bits = info.st_mode >> 6
        elif info.st_gid == self.gid:
            bits = info.st_mode >> 3
        else:
            bits = info.st_mode
        return bits & mask == mask

    def may_work_in(self, directory: str) -> bool:
        """Enter every directory on the way, and write in the last one."""
        return self._reaches(directory, 0o3)

    def may_read(self, path: str) -> bool:
        """Enter every directory on the way (the job may have made its working directory a
        link into one its user cannot enter, such as root's), and read the file."""
        return self._reaches(path, 0o4)

    def _reaches(self, path: str, mask: int) -> bool:
        """``mask`` on where ``path`` leads, and every directory above it enterable."""
        real = os.path.realpath(path)
        parts = [os.path.dirname(real)]
        while parts[-1] != "/":
            parts.append(os.path.dirname(parts[-1]))
        try:
            return self._may(real, mask) and all(self._may(part, 0o1) for part in parts)
        except OSError:
            return False


def make_directories(path: str, user: JobUser | None) -> str | None:
    """``mkdir -p``, as the job's user: a job has only the directories its user could make.
    Made by the agent (root) and given to the user, ``--working-dir
    /etc/systemd/system/ssh.service.d`` was a directory of a root service's settings that
    the job then wrote in. None when made, else why not."""
    if user is None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None
    return as_user(user, "mkdir", "-p", "--", path)


def as_user(user: JobUser, *argv: str) -> str | None:
    """Runs a file utility (mkdir, mv, rm) as the job's user: in the places the job's user
    chose or can change, the agent (root) acts with no more rights than that user, and
    follows no link that user could not. None when it succeeded, else why not."""
    done = subprocess.run(
        list(argv),
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    said = done.stderr.strip().rpartition(": ")[2]  # "mkdir: cannot create directory '/x': Permission denied"
    return f"{said or f'{argv[0]} exited with {done.returncode}'} for the job's user (uid {user.uid})"


def exit_code_of(returncode: int) -> int:
    """Shell convention: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


# What a shell's own exit codes mean (POSIX: the command was not found, or not executable).
SHELL_CODES = {
    126: "the shell's code for a command it found but could not run",
    127: "the shell's code for a command not found",
}


def exit_text(returncode: int, out_of_memory: bool) -> str:
    """How the command ended, as a person reads it: the code, and what it likely means
    where the code says (a signal the process itself died of, the kernel's OOM killer,
    a shell that could not start the command)."""
    code = exit_code_of(returncode)
    text = f"exited with code {code}"
    if out_of_memory:
        return f"{text}: killed by the kernel's OOM killer, out of memory (OOMKilled)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"{text}: killed by {name}"
    return f"{text} ({SHELL_CODES[code]})" if code in SHELL_CODES else text


def signal_note(name: str) -> str:
    """The job log's line for a `job signal` given to its command (where its effect shows)."""
    return f"[hodei] SIG{name} sent to the command (job signal)"


class JobProcess:
    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str],
        working_dir: str | None,
        timeout: float,
        kill_grace: float,
        on_output: Callable[[str, list[str], bool], None],
        user: JobUser | None = None,
        before: Callable[[], str | None] | None = None,
    ) -> None:
        """``before``: what to do in the working directory before the command starts;
        what it returns (a problem) fails the start."""
        self.before = before
        self.argv = argv
        self.env = dict(env)
        self.working_dir = working_dir
        self.user = user
        self.timeout = timeout
        self.kill_grace = kill_grace
        # (stream, texts, partial): complete lines, or one piece of a long line (partial).
        self.on_output = on_output
        self._interrupted: Outcome | None = None
        # Set on cancel and when the process exits: the wait loop sleeps on it.
        self._wake = threading.Event()
        self._exited = threading.Event()
        self._cancel_reason = ""
        # A cancel's own grace, in place of kill_grace (None: kill_grace).
        self._cancel_grace: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # Signals asked for before the command started (`job signal` as it is being started),
        # sent to it once it has.
        self._signals_lock = threading.Lock()
        self._pending_signals: list[int] = []
        # The commands run beside it (`job exec`) that have not been waited for: the orphan
        # reaper leaves them to their own waits (their exit codes are wanted), under this lock.
        self._reaping = threading.Lock()
        self._beside: set[int] = set()
        # Set once the command has ended and its leftovers are being killed.
        self._ending = False

    def signal(self, signum: int) -> None:
        """Sends ``signum`` to the command's processes (its whole group), as soon as it runs."""
        with self._signals_lock:
            if self._process is None:
                self._pending_signals.append(signum)
                return
            pgid = self._process.pid
        self._signal_group(pgid, signum)

    def cancel(self, reason: str, grace: float | None = None) -> None:
        """``grace``: the seconds between SIGTERM and SIGKILL the cancel asked for; the job
        still gets no more than its timeout and kill_grace, which the server counts on."""
        if self._interrupted is None:
            self._cancel_grace = grace
        self.interrupt(Outcome.CANCELLED, f"cancelled: {reason}")

    def interrupt(self, outcome: Outcome, reason: str) -> None:
        """Stops the job (SIGTERM, grace, SIGKILL) and reports ``outcome``."""
        if self._interrupted is None:
            self._cancel_reason = reason
            self._interrupted = outcome
        self._wake.set()

    def run(self) -> Finished:
        started_at = time.time()
        memory = MemoryGroup.of_worker(self.env.get("HODEI_WORKER_ID", ""))
        oom_before = memory.oom_kills() if memory else None
        problem = self._prepare_working_dir()
        if problem is None and self.before is not None:
            problem = self.before()
        if problem is not None:
            return Finished(Outcome.START_FAILED, 126, problem)
        try:
            process = self._spawn(self.argv)
        except OSError as exc:
            return Finished(Outcome.START_FAILED, *start_failure(exc, self.argv[0], self.working_dir))
        with self._signals_lock:
            self._process, pending = process, self._pending_signals
        for signum in pending:
            self._signal_group(process.pid, signum)
        readers = [
            threading.Thread(target=self._pump, args=(process.stdout, STDOUT), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, STDERR), daemon=True),
        ]
        for reader in readers:
            reader.start()
        reaper = threading.Thread(target=self._reap_orphans, args=(process,), daemon=True)
        reaper.start()
        outcome, message = self._wait(process)
        finished_at = time.time()
        self._ending = True
        # Whatever the job left behind goes too: it would hold the output pipes open and
        # outlive the job. So do the commands run beside it (each its own group).
        self._signal_group(process.pid, signal.SIGKILL)
        with self._reaping:
            beside = list(self._beside)
        for pgid in beside:
            self._signal_group(pgid, signal.SIGKILL)
        end_strays()
        for reader in readers:
            reader.join(timeout=5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        returncode = process.returncode if process.returncode is not None else -signal.SIGKILL
        reap_all()
        # The agent's children are the job's processes alone (a forked agent starts at zero).
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = exit_code_of(returncode)
        if outcome is Outcome.EXITED:
            # SIGKILLed, or a shell saying its child was (128 + 9), while the group's OOM count rose.
            killed = code == 128 + signal.SIGKILL
            oom = killed and memory is not None and oom_before is not None and (memory.oom_kills() or 0) > oom_before
            message = exit_text(returncode, oom)
        peak = memory.peak_bytes() if memory else None
        return Finished(outcome, code, message, started_at, finished_at, used.ru_utime + used.ru_stime, peak)

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """``argv`` as the job's user, in its directory and environment, in a process group
        of its own, its output in pipes."""
        user = self.user
        return subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.working_dir or None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )

    def beside(self, argv: list[str], timeout: float, most: int, mask: Masker) -> Beside:
        """Runs ``argv`` as the job's command runs — its user, working directory and
        environment, a process group of its own — while that runs (`job exec`); killed
        after ``timeout`` seconds, or when the job's command ends. ``mask`` hides the job's
        secrets in what it printed, of which ``most`` bytes of each stream are kept."""
        if self._process is None or self._exited.is_set():
            return NOT_RUNNING
        with self._reaping:
            try:
                process = self._spawn(argv)
            except OSError as exc:
                return Beside(*start_failure(exc, argv[0], self.working_dir))
            self._beside.add(process.pid)
        # Read past ``most`` by the longest secret: one cut there is masked whole.
        kept = [_Kept(most + mask.longest), _Kept(most + mask.longest)]
        readers = [
            threading.Thread(target=output.read, args=(pipe,), daemon=True)
            for output, pipe in zip(kept, (process.stdout, process.stderr), strict=True)
        ]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        # It, once timed out, and whatever it left in its group (which would hold the pipes).
        self._signal_group(process.pid, signal.SIGKILL)
        process.wait()
        with self._reaping:
            self._beside.discard(process.pid)
        for reader in readers:
            reader.join(timeout=5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        if timed_out:
            code, message = 124, f"timed out after {timeout:g}s"
        elif self._ending:
            code, message = 128 + signal.SIGKILL, "killed: the job's command ended"
        else:
            code, message = exit_code_of(process.returncode), exit_text(process.returncode, False)
        out, err = kept
        stdout, stderr = (mask.masked_bytes(bytes(output.data))[:most] for output in kept)
        return Beside(code, message, stdout, stderr, out.total, err.total)

    def _prepare_working_dir(self) -> str | None:
        """Creates a missing working directory as the job's user would; None when usable.
        (The child changes directory before it drops to the job's user, so whether that
        user may work there is checked here.)"""
        if not self.working_dir:
            return None
        if not os.path.isdir(self.working_dir):
            problem = make_directories(self.working_dir, self.user)
            if problem is not None:
                return f"cannot create working directory {self.working_dir}: {problem}"
        if self.user is not None and not self.user.may_work_in(self.working_dir):
            denied = f"Permission denied for the job's user (uid {self.user.uid})"
            return f"cannot use working directory {self.working_dir}: {denied}"
        return None

    def _wait(self, process: subprocess.Popen[bytes]) -> tuple[Outcome, str]:
        deadline = time.monotonic() + self.timeout
        watcher = threading.Thread(target=self._watch_exit, args=(process,), daemon=True)
        watcher.start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop(process, self.kill_grace)
                return Outcome.TIMED_OUT, f"timed out after {self.timeout:g}s"
            self._wake.wait(remaining)
            self._wake.clear()
            if self._exited.is_set():
                process.wait()
                return Outcome.EXITED, ""
            if self._interrupted is not None:
                grace = self.kill_grace if self._cancel_grace is None else self._cancel_grace
                self._stop(process, min(grace, max(0.0, deadline - time.monotonic()) + self.kill_grace))
                return self._interrupted, self._cancel_reason

    def _watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        """Blocks until the job's process exits (no polling delay), then wakes the wait.
        WNOWAIT leaves the exit status for subprocess to collect. (Popen.poll() from two
        threads can answer None while the other holds its lock: never rely on it here.)"""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        self._exited.set()
        self._wake.set()

    def _stop(self, process: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM to the whole group, ``grace`` seconds, then SIGKILL (at once: no grace)."""
        if grace > 0:
            self._signal_group(process.pid, signal.SIGTERM)
        if not self._exited.wait(grace):
            self._signal_group(process.pid, signal.SIGKILL)
            self._exited.wait()
        process.wait()

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def _pump(self, stream: BinaryIO, name: str) -> None:
        """Hands on the output as it comes: the complete lines of each read in one call
        (a call per line cost more than all the rest of the reading), and a long line in
        pieces of exactly ``PIECE_BYTES``, each handed on alone with ``partial`` once more
        output follows (the line goes on in the next piece), so no line, however long, is
        ever held whole. A last line without a newline is handed on at the end."""
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        fd = stream.fileno()
        started = b""  # the beginning of a line whose end has not been read yet
        held: str | None = None  # a whole piece, waiting to learn whether output follows
        while chunk := os.read(fd, PIECE_BYTES - len(started)):
            if held is not None:
                self.on_output(name, [held], True)
                held = None
            data = started + chunk
            end = data.rfind(b"\n") + 1
            if end:
                text = decode(data[:end])
                lines = text.split("\n")
                lines.pop()  # what follows the last newline: nothing
                if "\r" in text:
                    lines = [line.rstrip("\r") for line in lines]
                self.on_output(name, lines, False)
                started = data[end:]
            else:
                started = data
            if len(started) >= PIECE_BYTES:
                held, started = decode(started), b""
        rest = decode(started, final=True)
        if held is not None:
            self.on_output(name, [held + ("" if started else rest)], bool(started))
        if started:
            self.on_output(name, [rest], False)

    def _reap_orphans(self, process: subprocess.Popen[bytes]) -> None:
        """Reaps re-parented orphans while the job runs, never the job's own process
        (subprocess must collect its exit status)."""
        while not self._exited.is_set():
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is not None and info.si_pid not in (0, process.pid):
                with self._reaping:
                    reaped = info.si_pid not in self._beside
                    if reaped:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(info.si_pid, 0)
                if reaped:
                    continue
            time.sleep(0.2)


def reaped() -> Iterator[tuple[int, int]]:
    """Each child that has ended, reaped now: its pid and exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def reap_all() -> None:
    for _ in reaped():
        pass
