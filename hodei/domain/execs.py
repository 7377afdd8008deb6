"""Commands run beside a running job's own (``job exec``): what one may be, and how many.

Debugging a job that hangs or misbehaves means looking inside it while it runs — its
processes, its files, its environment — where it runs: Kubernetes has ``kubectl exec``,
Docker ``docker exec``, Nomad ``nomad alloc exec``, Slurm ``srun --overlap --jobid``. A
command run this way is the job's own in every way but its output: its worker runs it as
the job's user, in its working directory and environment (its secrets masked in what it
prints), and its end is told to the one who asked, not the job's log. Each is a
``JobExecRequested`` event (who, what, for which attempt) and a ``JobExecEnded`` (how it
ended): the job's history says who looked inside it, and how. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from hodei.errors import InvalidInput, excerpt

DEFAULT_TIMEOUT = 60
MOST_TIMEOUT = 3600
# Beyond a command's own timeout, how long its worker has to say how it ended (its kill of
# it, and the way back): then whoever waits is told it did not answer.
ANSWER_WITHIN = 15.0
# A command line as long as a job's own may be (JobSpec's 64 KiB of arguments).
MOST_ARGV_BYTES = 64 * 1024
MOST_ARGS = 1000
# Commands a job may be given this way in all: each is two events of the job's history.
MOST_EXECS = 100
# What is kept of each of its streams: enough for a process listing or a file's head,
# little enough that a result is one gRPC message.
MOST_OUTPUT_BYTES = 512 * 1024


def cut(printed_bytes: int) -> bool:
    """Whether a stream that printed so much was kept only in part."""
    return printed_bytes > MOST_OUTPUT_BYTES


def check_exec(argv: Sequence[str], timeout_seconds: int) -> tuple[list[str], int]:
    """The command and its timeout in seconds (0: the default), or InvalidInput saying
    what is wrong."""
    if not argv or not argv[0].strip():
        raise InvalidInput("give the command to run: job exec ID -- COMMAND [ARGS...]")
    if len(argv) > MOST_ARGS:
        raise InvalidInput(f"at most {MOST_ARGS} arguments, got {len(argv)}")
    for arg in argv:
        if "\0" in arg:
            raise InvalidInput(f"an argument holds a NUL character: {excerpt(arg)}")
    size = sum(len(arg.encode()) for arg in argv)
    if size > MOST_ARGV_BYTES:
        raise InvalidInput(f"the command is {size} bytes long; at most {MOST_ARGV_BYTES}")
    if timeout_seconds < 0 or timeout_seconds > MOST_TIMEOUT:
        raise InvalidInput(f"the timeout is 1 to {MOST_TIMEOUT} seconds, got {timeout_seconds}")
    return list(argv), timeout_seconds or DEFAULT_TIMEOUT
