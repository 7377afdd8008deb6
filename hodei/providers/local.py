"""The local provider: each worker is a process on the server's own host.

It is the engine of the fast test suite and the fallback where no Docker engine runs.
The default agent is forked from a template that has imported it already
(``hodei.providers.agent_template``); a configured worker command is executed as is.
Each worker gets its own cgroup (``hodei.providers.cgroups``) when the host allows it:
everything the worker starts stays inside, even processes that leave their session,
and destroying the worker kills the whole group. The agent starts with a clean
environment (only its own settings: never the server's), and when the server runs as
root the job runs as ``HODEI_LOCAL_RUN_AS`` (default ``nobody``), so it can read
neither the agent's credentials nor the server's files. Given a range of uids, each
running job gets one of its own: then jobs cannot read each other's environment (their
secrets), signal each other's processes or enter each other's homes either.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import resource
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from hodei_worker.runner import home_name, remove_home

from hodei.domain.provider import ProviderType
from hodei.errors import ProviderError
from hodei.providers.agent_template import AgentTemplate, alive
from hodei.providers.base import WORKER_OOM_SCORE_ADJ, Health, Observation, WorkerLaunch, WorkerProvider
from hodei.providers.cgroups import WorkerCgroups, cgroup1_roots, cgroup2_root, limits_wanted, unenforceable
from hodei.providers.disk import DiskUse, DiskWatch, tree_bytes

log = logging.getLogger(__name__)


class AgentProcess(Protocol):
    """A worker's agent as the provider tracks it: exec'd (``Popen``) or forked (``ForkedAgent``)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float) -> int: ...


# Moves the shell into the worker's cgroups (the files before `--`), then becomes the
# agent: nothing runs outside them.
_ENTER_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; exec "$@"'
EMPTY_GROUP_GRACE = 10.0
# How much of a worker's output file is read for its last lines.
TAIL_BYTES = 64 * 1024


def _as_root(run_as: str | range | None) -> bool:
    """Whether a server running as root runs its local jobs as root: as its own user
    (``server``: None), or as a user named so (``root``, ``0``, ``0:0``)."""
    if run_as is None:
        return True
    if isinstance(run_as, range):
        return False  # its uids are no account's
    name = run_as.partition(":")[0]
    if name.isdigit():
        return int(name) == 0
    try:
        return pwd.getpwnam(name).pw_uid == 0
    except KeyError:
        return False


class LocalProvider(WorkerProvider):
    provider_type = ProviderType.LOCAL

    def __init__(
        self,
        installation: str,
        worker_command: Sequence[str] | None,
        log_dir: Path,
        kill_grace: float = 5.0,
        run_as: str | range | None = "nobody",
        max_processes: int = 0,
    ) -> None:
        """``max_processes``: at most so many processes and threads in a worker (0: no
        limit), where cgroups can hold it to them."""
        self.installation = installation
        # The agent's base environment: the template's (``agent_python``) for the default
        # agent, only PATH and LANG for a configured command.
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        self.template: AgentTemplate | None = None
        if worker_command:
            self.worker_command = list(worker_command)
            self.agent_env = base
        else:
            self.template = AgentTemplate.of_this_python(base)
            self.worker_command = self.template.command
            self.agent_env = self.template.env
        self.log_dir = log_dir / "workers"
        # Where the agents make their jobs' homes (each named after its worker): this
        # provider removes a worker's when it destroys it, should its agent not have.
        self.homes = Path(tempfile.gettempdir())
        self.kill_grace = kill_grace
        self.run_as = run_as if os.geteuid() == 0 else None
        if os.geteuid() == 0 and _as_root(self.run_as):
            log.warning(
                "local jobs run as root (HODEI_LOCAL_RUN_AS=%s): each may do anything on this host, read the "
                "server's settings, keys and database password among it; give them an account of their own "
                "(the default, nobody, or a range of uids no account has, such as 80000-89999)",
                self.run_as or "server",
            )
        # The server's soft limit of open files as it was started, before it raised it
        # (hodei.server.preflight.open_files, which runs after the providers are built).
        self.open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        root = cgroup2_root()
        self.cgroups = WorkerCgroups(root, installation, cgroup1_roots(), max_processes) if root is not None else None
        if self.cgroups is None:
            log.warning(
                "no writable cgroup v2 hierarchy: a local job's processes that leave its process group may "
                "outlive a worker that is killed"
            )
        self._children: dict[str, AgentProcess] = {}
        # The uid each worker's job runs as, when run_as is a range.
        self._uids: dict[str, int] = {}
        self._lock = threading.Lock()
        self.disk = DiskWatch("local", self._disk_use, self._stop_for_disk)
        if self._disk_limits():  # workers with a limit, started before a restart
            self.disk.start()

    def _environment(self, launch: WorkerLaunch) -> dict[str, str]:
        """The agent's own settings and nothing of the server's."""
        # The agent copies nothing of the job's output to its own: no second copy on disk.
        env = {
            **self.agent_env,
            **launch.env,
            "HODEI_ECHO_OUTPUT": "0",
            "HODEI_JOB_HOMES": str(self.homes),
            "HODEI_OPEN_FILES": str(self.open_files),
        }
        if isinstance(self.run_as, range):
            with self._host_lock():
                uid = self._uids[launch.worker_id] = self._free_uid(self.run_as)
                self._uid_record(launch.worker_id).write_text(str(uid))
            env["HODEI_JOB_USER"] = f"{uid}:{uid}"
        elif self.run_as:
            env["HODEI_JOB_USER"] = self.run_as
        return env

    def _uid_record(self, worker_id: str) -> Path:
        """Where a worker's uid is written down when it is chosen: a server started later
        finds it there, also while the agent has not yet become that uid (its processes'
        owners would say root then). In the server's own log directory, gone with the worker."""
        return self.log_dir / f"{worker_id}.uid"

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[None]:
        """Held while a uid is chosen and written down: another server of this installation
        on this host (sharing the log directory) chooses only once the record is there, and
        the worker's cgroup that names it (made before). A file opened for writing, which
        NFS's emulation of flock needs too."""
        path = self.log_dir.parent / "workers.lock"
        with contextlib.ExitStack() as held:
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                held.callback(os.close, descriptor)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError as exc:
                raise ProviderError(
                    f"cannot lock {path} to choose a uid of HODEI_LOCAL_RUN_AS: {exc.strerror}"
                ) from exc
            yield

    def _free_uid(self, uids: range) -> int:
        """The lowest of ``uids`` no local job of this installation runs as: those this
        provider started, and those of the other workers in its cgroups (their records):
        found running at its start, or another server's. Called under both locks."""
        taken = set(self._uids.values())
        if self.cgroups is not None:
            for worker_id in set(self.cgroups.workers()) - set(self._uids):
                with contextlib.suppress(OSError, ValueError):
                    taken.add(int(self._uid_record(worker_id).read_text()))
        uid = next((uid for uid in uids if uid not in taken), None)
        if uid is None:
            raise ProviderError(
                f"every uid of HODEI_LOCAL_RUN_AS={uids[0]}-{uids[-1]} is a running local job's: "
                "widen the range, or lower the local provider's limit"
            )
        return uid

    def create_worker(self, launch: WorkerLaunch) -> str:
        with self._lock:
            existing = self._children.get(launch.worker_id)
            if existing is not None:
                return f"pid-{existing.pid}"
            procs: list[Path] = []
            if self.cgroups is not None:
                if self.cgroups.pids(launch.worker_id):
                    # Started before a restart of this server: the group is its identity.
                    return f"cgroup-{launch.worker_id}"
                procs = self.cgroups.create(launch.worker_id, launch.cpu_cores, launch.memory_bytes)
            elif wanted := limits_wanted(launch.cpu_cores, launch.memory_bytes):
                raise unenforceable(wanted)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output, env = self.log_dir / f"{launch.worker_id}.log", self._environment(launch)
            if self.template is not None:
                child: AgentProcess = self.template.fork(launch.worker_id, env, output, procs)
            else:
                child = self._execute(env, output, procs)
            # Before its job can start: that waits for the agent's registration, and for
            # this step's end.
            with contextlib.suppress(OSError):  # gone already: its end is reported as such
                Path(f"/proc/{child.pid}/oom_score_adj").write_text(str(WORKER_OOM_SCORE_ADJ))
            self._children[launch.worker_id] = child
            if launch.disk_bytes > 0:
                self._disk_record(launch.worker_id).write_text(f"{launch.disk_bytes} {child.pid}")
                self.disk.start()
            return f"pid-{child.pid}"

    def _execute(self, env: dict[str, str], output: Path, procs: list[Path]) -> AgentProcess:
        command = self.worker_command
        if procs:
            command = ["/bin/sh", "-c", _ENTER_CGROUPS, "hodei-enter", *map(str, procs), "--", *command]
        try:
            with output.open("ab") as file:
                return subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ProviderError(f"cannot start the worker process {self.worker_command[0]}: {exc}") from exc

    def destroy_worker(self, worker_id: str) -> None:
        """SIGTERM to the agent (it stops its job), SIGKILL to all that is left after the
        grace: the whole cgroup, or without one the agent's process group."""
        with self._lock:
            child = self._children.pop(worker_id, None)
        pids = set(self.cgroups.pids(worker_id)) if self.cgroups else set()
        if child is not None and child.poll() is None:
            pids.add(child.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.05)
        if self.cgroups is not None:
            self.cgroups.kill(worker_id)
        elif child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        (self.log_dir / f"{worker_id}.log").unlink(missing_ok=True)
        self._uid_record(worker_id).unlink(missing_ok=True)
        self._disk_record(worker_id).unlink(missing_ok=True)
        self.disk.forget(worker_id)
        # An agent killed (its cgroup's SIGKILL above, the OOM killer, by hand) left its
        # job's files.
        remove_home(str(self.homes / home_name(worker_id)))
        with self._lock:
            self._uids.pop(worker_id, None)  # free once nothing runs as it

    def _disk_record(self, worker_id: str) -> Path:
        """A worker's disk limit and its agent's pid (``<bytes> <pid>``), in the server's log
        directory beside its uid record, so that a server started later (or another on this
        host) goes on measuring it."""
        return self.log_dir / f"{worker_id}.disk"

    def _disk_limits(self) -> dict[str, tuple[int, int]]:
        """Each limited worker's limit and agent pid, from the records."""
        found = {}
        for record in self.log_dir.glob("*.disk"):
            with contextlib.suppress(OSError, ValueError):
                limit, pid = record.read_text().split()
                found[record.stem] = (int(limit), int(pid))
        return found

    def _disk_use(self) -> list[DiskUse]:
        """The job's home of each limited worker: its HOME and TMPDIR, and its working
        directory unless it was given another (a local job may write wherever its user may:
        only its own directory is its disk)."""
        found = []
        for worker_id, (limit, _) in self._disk_limits().items():
            home = str(self.homes / home_name(worker_id))
            found.append(DiskUse(worker_id, tree_bytes(home), limit, f"its home {home}"))
        return found

    def _stop_for_disk(self, worker_id: str) -> None:
        """SIGTERM to the agent, which stops its job and reports it stopped; the job's end
        destroys the worker as usual."""
        limited = self._disk_limits().get(worker_id)
        if limited is None or not alive(pid := limited[1]):
            return
        if self.cgroups is not None and pid not in self.cgroups.pids(worker_id):
            return  # its pid is another process's now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)

    def stopped_by_others(self, worker_id: str) -> str | None:
        return self.disk.why(worker_id)

    def output_tail(self, worker_id: str, lines: int) -> str:
        try:
            with (self.log_dir / f"{worker_id}.log").open("rb") as output:
                output.seek(max(output.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
                text = output.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    def observe(self) -> list[Observation]:
        found: dict[str, Observation] = {}
        # Groups first, then children: a group created meanwhile belongs to a child
        # already registered (create holds the lock from mkdir to Popen).
        for worker_id in self.cgroups.workers() if self.cgroups else ():
            assert self.cgroups is not None
            pids = self.cgroups.pids(worker_id)
            # An empty group may be one another server (same host) is just filling.
            gone = not pids and self.cgroups.age(worker_id) > EMPTY_GROUP_GRACE
            failure = "its processes are gone" if gone else None
            found[worker_id] = Observation(worker_id, None, f"cgroup-{worker_id}", running=bool(pids), failure=failure)
        with self._lock:
            children = dict(self._children)
        for worker_id, child in children.items():
            code = child.poll()
            failure = None if code is None else f"worker process exited with code {code}"
            if code == -signal.SIGKILL and self.cgroups and self.cgroups.oom_kills(worker_id):
                failure = f"{failure} (killed: out of memory, under the job's --memory)"
            found[worker_id] = Observation(worker_id, None, f"pid-{child.pid}", running=code is None, failure=failure)
        return list(found.values())

    def health(self) -> Health:
        isolation = (
            f"own cgroup each, {self.cgroups.limits()}" if self.cgroups else "no cgroups, no --cpu/--memory limits"
        )
        if isinstance(self.run_as, range):
            user = f", jobs run as a uid of their own of {self.run_as[0]}-{self.run_as[-1]}"
        else:
            user = f", jobs run as {self.run_as}" if self.run_as else ""
        how = "forked from" if self.template is not None else "run as"
        return Health(True, f"workers {how} `{' '.join(self.worker_command)}` on this host ({isolation}{user})")

    def close(self) -> None:
        self.disk.close()
        with self._lock:
            self._children.clear()
            if self.template is not None:
                self.template.close()
        if self.cgroups is not None:
            self.cgroups.forget_if_empty()
