"""The job specification a user submits, and its validation."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hodei.errors import InvalidInput

MAX_TIMEOUT_SECONDS = 7 * 24 * 3600.0
MAX_ATTEMPTS = 10
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# What users type for --provider, mapped to the provider type.
PROVIDER_ALIASES = {
    "docker": "docker",
    "kubernetes": "kubernetes",
    "k8s": "kubernetes",
    "kube": "kubernetes",
    "local": "local",
}


def normalise_provider(value: str) -> str:
    """Maps an alias such as ``k8s`` to its provider type; other values pass unchanged."""
    cleaned = value.strip().lower()
    return PROVIDER_ALIASES.get(cleaned, cleaned)


@dataclass(frozen=True)
class JobSpec:
    """What to run and under which limits.

    Without ``args`` the command is a shell command line (``/bin/sh -c``); with
    ``args`` it is a program executed directly, so ``bash`` with ``-c '…'`` works.
    """

    name: str
    command: str
    timeout_seconds: float
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    provider: str = ""
    cpu_cores: float = 0.0
    memory_bytes: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = ""
    max_attempts: int = 1

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.command.strip():
            found.append("command must not be empty")
        if len(self.name) > 255:
            found.append("name must be at most 255 characters")
        if not math.isfinite(self.timeout_seconds) or self.timeout_seconds <= 0:
            found.append(f"timeout must be a positive number of seconds, got {self.timeout_seconds:g}")
        elif self.timeout_seconds > MAX_TIMEOUT_SECONDS:
            found.append(f"timeout must be at most {MAX_TIMEOUT_SECONDS:g} seconds")
        for key in self.env:
            if not _ENV_NAME.match(key):
                found.append(f"environment variable name `{key}` is not valid (letters, digits, _)")
        texts = [self.command, *self.args, *self.env.values()]
        if any("\x00" in text for text in texts):
            found.append("command, arguments and environment values must not contain NUL")
        if not math.isfinite(self.cpu_cores) or self.cpu_cores < 0:
            found.append("cpu cores must be zero (the default) or positive")
        if self.memory_bytes < 0:
            found.append("memory must be zero (the default) or positive")
        if any(not key.strip() for key in self.labels):
            found.append("label keys must not be empty")
        if self.working_dir and not self.working_dir.startswith("/"):
            found.append(f"working directory must be an absolute path, got `{self.working_dir}`")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            found.append(f"max attempts must be between 1 and {MAX_ATTEMPTS}")
        return found

    def validate(self) -> None:
        found = self.problems()
        if found:
            raise InvalidInput("invalid job: " + "; ".join(found))

    def to_payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "args": list(self.args),
            "env": dict(self.env),
            "timeout_seconds": self.timeout_seconds,
            "provider": self.provider,
            "resources": {"cpu_cores": self.cpu_cores, "memory_bytes": self.memory_bytes},
            "labels": dict(self.labels),
            "working_dir": self.working_dir,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> JobSpec:
        resources = payload.get("resources") or {}
        return cls(
            name=payload["name"],
            command=payload["command"],
            timeout_seconds=float(payload["timeout_seconds"]),
            args=tuple(payload.get("args") or ()),
            env=dict(payload.get("env") or {}),
            provider=payload.get("provider") or "",
            cpu_cores=float(resources.get("cpu_cores") or 0.0),
            memory_bytes=int(resources.get("memory_bytes") or 0),
            labels=dict(payload.get("labels") or {}),
            working_dir=payload.get("working_dir") or "",
            max_attempts=int(payload.get("max_attempts") or 1),
        )
