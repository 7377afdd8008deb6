"""A provider's helper process, told what to do in JSON lines on its stdin: the sim
provider's fleet, the local provider's agent template. Each reports back on its stdout,
read by a thread of its provider; its input closing tells it to end."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping
from typing import Any

import orjson

from hodei.errors import ProviderError


def send(process: subprocess.Popen[bytes], order: Mapping[str, Any], name: str) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(orjson.dumps(order) + b"\n")
        process.stdin.flush()
    except (BrokenPipeError, ValueError) as exc:
        raise ProviderError(f"{name} is gone: {exc}", retryable=True) from exc


def stop(process: subprocess.Popen[bytes]) -> None:
    """Closes its input and waits for it to end (killing it after 5 s)."""
    assert process.stdin is not None
    with contextlib.suppress(OSError):
        process.stdin.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
