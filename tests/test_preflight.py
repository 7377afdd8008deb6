"""The log directory's start-up check: every job's output is in it, and local jobs run on
the server's host, so no other user of the host may read it."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei import config
from hodei.server.preflight import Misconfigured, check_log_dir


@pytest.fixture
def open_logs() -> Iterator[Path]:
    """A log directory any user of the host may read, as the default /tmp/hodei-logs made
    with a usual umask is (pytest's own temporary directories are their user's only)."""
    parent = Path(tempfile.mkdtemp(prefix="hodei-open-"))
    logs = parent / "logs"
    logs.mkdir()
    for directory in (parent, logs):
        directory.chmod(0o755)
    yield logs
    shutil.rmtree(parent)


def test_a_log_directory_open_to_others_is_made_the_servers_own_and_said(
    open_logs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = open_logs
    with caplog.at_level(logging.WARNING, "hodei.server.preflight"):
        check_log_dir(config.load({"HODEI_LOG_DIR": str(logs)}))
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert f"HODEI_LOG_DIR={logs} was open to other users of this host (mode 0755): now 0700" in caplog.text
    caplog.clear()
    made = tmp_path / "new" / "logs"
    check_log_dir(config.load({"HODEI_LOG_DIR": str(made)}))
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert caplog.text == ""  # made private: nothing to take away


def test_a_log_directory_others_may_read_that_the_server_cannot_change_is_refused(open_logs: Path) -> None:
    """A server running as another user than the directory's owner cannot take the rights
    away: it refuses to start rather than keep jobs' output there. (The tests run as root:
    the server here is a child that became nobody.)"""
    logs = open_logs
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # a server of another user: nobody's
        os.close(reading)
        said = b"started"
        try:
            os.setgid(65534)
            os.setuid(65534)
            check_log_dir(config.load({"HODEI_LOG_DIR": str(logs)}))
        except Misconfigured as exc:
            said = str(exc).encode()
        finally:
            os.write(writing, said)
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(child, 0)
    assert answer == (
        f"HODEI_LOG_DIR={logs}: other users of this host may read it (mode 0755), and this server's user cannot "
        "change that: every job's output is there; make it the server's own, mode 0700"
    )
    assert stat.S_IMODE(logs.stat().st_mode) == 0o755
