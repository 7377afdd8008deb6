"""A job's outputs: small named values it leaves for whoever submitted it (a version it
built, a URL it deployed to, a count), written to the file ``$HODEI_OUTPUT`` names as
GitHub Actions' steps write ``$GITHUB_OUTPUT``: a ``KEY=VALUE`` line each, or a value of
several lines between ``KEY<<DELIMITER`` and a line holding only the delimiter. Read once
the command has exited; reported with its result (``job output ID KEY``).

A job gets through its agent only what it could read itself: the file is opened without
following a link, must be a regular file, and, when the agent is root and runs the job
as another user, one that user may read. What is wrong with it keeps no output and is said
in the job's log: the job ends as it would have.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from hodei_worker.runner import JobUser

# Under the job's home: the outputs of the jobs it starts after, <job id>/<KEY> each.
AFTER_DIRECTORY = ".hodei-after"

# The file's most: outputs are values to read, not files to carry (artifacts are).
MAX_BYTES = 64 * 1024
MAX_OUTPUTS = 100
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class Outputs:
    values: dict[str, str] = field(default_factory=dict)
    # What the job's log is told: why none was kept.
    notes: list[str] = field(default_factory=list)


def read(path: str, user: JobUser | None) -> Outputs:
    """The outputs the job wrote to ``path``; none when it wrote none."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return Outputs()
    except OSError as exc:  # ELOOP: a link
        return Outputs(notes=[f"outputs not kept: {path} cannot be read ({exc.strerror}; a link is not followed)"])
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            return Outputs(notes=[f"outputs not kept: {path} is not a regular file"])
        if user is not None and not user.allows(info, 0o4):
            return Outputs(notes=[f"outputs not kept: {path} is not readable by the job's user"])
        data = os.read(handle, MAX_BYTES + 1)
    finally:
        os.close(handle)
    if len(data) > MAX_BYTES:
        return Outputs(notes=[f"outputs not kept: {path} holds more than {MAX_BYTES} bytes"])
    try:
        values = parse(data.decode("utf-8", errors="replace"))
    except ValueError as exc:
        return Outputs(notes=[f"outputs not kept: {exc}"])
    return Outputs(values)


def parse(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines and ``KEY<<DELIMITER`` blocks (GitHub's format); blank lines
    are skipped, a key written again takes its last value. Raises ValueError naming the
    line that is neither."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    number = 0
    while number < len(lines):
        line = lines[number].removesuffix("\r")
        number += 1
        if not line.strip():
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc > 0 and (equals < 0 or heredoc < equals):
            key, delimiter, start = line[:heredoc], line[heredoc + 2 :], number
            body: list[str] = []
            while number < len(lines) and lines[number].removesuffix("\r") != delimiter:
                body.append(lines[number].removesuffix("\r"))
                number += 1
            if number == len(lines) or not delimiter:
                raise ValueError(f"line {start}: {key}<<{delimiter} has no line {delimiter!r} ending it")
            number += 1
            value = "\n".join(body)
        elif equals > 0:
            key, value = line[:equals], line[equals + 1 :]
        else:
            raise ValueError(f"line {number} is neither KEY=VALUE nor KEY<<DELIMITER")
        if not _KEY.match(key):
            raise ValueError(
                f"line {number}: output name {key[:40]!r} must be 1 to 128 letters, digits, `_`, `.` or `-`, "
                "not beginning with a digit"
            )
        values[key] = value
        if len(values) > MAX_OUTPUTS:
            raise ValueError(f"more than {MAX_OUTPUTS} outputs")
    return values


def write_after(home: str, after: Mapping[str, Mapping[str, str]], user: JobUser | None) -> str:
    """The outputs of the jobs it starts after as files, ``<job id>/<KEY>`` holding the
    value as it was written, in a directory of the job's fresh home (nothing of the job's
    is there yet), given to the job's user; the directory's path."""
    root = os.path.join(home, AFTER_DIRECTORY)
    made = [root]
    os.mkdir(root, 0o755)
    for job_id, values in after.items():
        directory = os.path.join(root, os.path.basename(job_id))
        os.mkdir(directory, 0o755)
        made.append(directory)
        for key, value in values.items():
            if not _KEY.match(key):  # a name the server took: never a path
                continue
            path = os.path.join(directory, key)
            with open(path, "x", encoding="utf-8") as file:
                file.write(value)
            made.append(path)
    if user is not None:
        for path in made:
            os.chown(path, user.uid, user.gid)
    return root
