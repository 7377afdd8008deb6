"""``python -m hodei_worker.template``: an agent that has imported everything and forks
the local provider's workers from itself.

Starting an agent from nothing costs more than its whole job usually does: the
interpreter, then grpcio and protobuf (about 170 ms of CPU here, on every job). The
local provider starts this template once; each worker is a fork of it that has only to
take its own settings and connect (a few milliseconds). The template is started with
a clean environment, as an agent would be, and never creates a gRPC channel: it stays
single-threaded, so a fork of it is as clean as a fresh process.

Protocol (one JSON object a line): the provider writes ``{"worker", "env", "output",
"cgroups"}`` on stdin; the template answers ``{"worker", "pid"}`` (or ``{"worker",
"error"}``) and later ``{"exited": pid, "code": code}`` for each of its children.
At the end of its input (the server is gone) it exits and leaves its children running,
as exec'd agents would be.

The child, before it runs anything, takes its own session, sends its output to its
worker's file, moves itself into its worker's cgroups, takes the environment it was
given (and nothing of the template's) and names itself after its job (``ps`` shows it).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import sys
import traceback
from typing import Any

import setproctitle

# Imported here, before any fork: this is what the children do not pay for.
from hodei_worker import agent
from hodei_worker.runner import reaped


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _reap() -> None:
    for pid, code in reaped():
        _reply({"exited": pid, "code": code})


def _become(request: dict[str, Any], wakeup: tuple[int, int]) -> None:
    """In the child: from a copy of the template to the worker's own agent."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    # Output first: whatever goes wrong from here is in the worker's own log.
    output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    for fd in (output, devnull, *wakeup):
        os.close(fd)
    for cgroup in request.get("cgroups", ()):
        with open(cgroup, "w") as procs:
            procs.write(str(os.getpid()))
    os.environ.clear()
    os.environ.update(request["env"])
    setproctitle.setproctitle(f"hodei-worker job={request['env'].get('HODEI_JOB_ID', '')} worker={request['worker']}")


def serve() -> dict[str, Any] | None:
    """Forks a child per request; returns in a child (its request), or None at the end
    of input in the template itself."""
    # Before any fork: the first title moves the process's environment out of the way
    # (its children's environment is replaced, which would leave it no room).
    setproctitle.setproctitle("hodei-worker template")
    # The collector then leaves what the template imported alone, in the template and in
    # its children: those pages stay shared instead of being copied at a child's first
    # collection.
    gc.freeze()
    wakeup = os.pipe()
    for fd in wakeup:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wakeup[1])
    # A handler (even one doing nothing) is what makes SIGCHLD write to the wakeup pipe.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    events = selectors.DefaultSelector()
    events.register(0, selectors.EVENT_READ)
    events.register(wakeup[0], selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in events.select():
            if key.fd == wakeup[0]:
                with contextlib.suppress(BlockingIOError):
                    while len(os.read(wakeup[0], 512)) == 512:
                        pass
                _reap()
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                return None
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as exc:
                    _reply({"worker": request["worker"], "error": f"cannot fork the agent: {exc}"})
                    continue
                if pid == 0:
                    events.close()
                    try:
                        _become(request, wakeup)
                    except BaseException:
                        traceback.print_exc()
                        os._exit(127)
                    return dict(request)
                _reply({"worker": request["worker"], "pid": pid})


def main() -> None:
    # In a child, the agent runs here, outside the template's loop, and ends with its own
    # exit code but without the interpreter's finalization: that would free (so write to)
    # every object it shares with the template, copying their pages — two thirds of a
    # forked agent's CPU (67 -> 20 ms). Its threads are daemons, with nothing left to do
    # once it returns; its output is flushed.
    if serve() is not None:
        try:
            agent.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
