"""A job's phases: when it passed each milestone of its life, read off its events.

Pure: the caller hands over the job's and its workers' events in commit order. A
job that is requeued passes the phases again; each phase carries its attempt, so a
retried job shows where every attempt went and how long each took.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hodei.domain.job import JobState, hold_text

_BY_EVENT = {
    "JobCreated": "queued",
    "JobHeld": "held",
    "JobReleased": "released",
    "JobProviderSelected": "provider_chosen",
    "JobAdmitted": "admitted",
    "WorkerResourceCreated": "worker_created",
    "WorkerRegistered": "registered",
    "JobAccepted": "started",
    "JobLogsPersisted": "logs_stored",
    "JobArtifactsExpired": "artifacts_expired",
    "WorkerTerminated": "worker_released",
}


# The phases at which an attempt ended: by itself, or to be run again.
ENDED = ("finished", "requeued")


@dataclass(frozen=True)
class Phase:
    name: str
    at: datetime
    attempt: int
    # Why an attempt ended ("requeued", "finished"): its status change's reason, such as
    # "attempt 1 failed (exited with code 3); retry 1 of 2"; how a cancelled job's
    # processes ended ("stopped"): "exited with code 143".
    detail: str = ""
    # What an attempt that ran used ("finished", "requeued", "stopped"), as its worker measured it.
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    # What an attempt that ended ("finished", "requeued") left in $HODEI_OUTPUT.
    outputs: Mapping[str, str] = field(default_factory=dict)


def phases_of(events: Iterable[tuple[str, str, datetime, dict[str, Any]]]) -> list[Phase]:
    """``events`` are (aggregate id, event type, occurred at, payload), oldest first. A
    worker's events count for its own attempt: a released worker of attempt 1 may be
    terminated after attempt 2 began."""
    attempt, found = 1, []
    worker_attempts: dict[str, int] = {}
    for aggregate_id, event_type, at, payload in events:
        name = _BY_EVENT.get(event_type)
        if event_type == "WorkerCreated":
            worker_attempts[aggregate_id] = int(payload["attempt"])
        if event_type == "JobStatusChanged":
            new_state = JobState(payload["new_state"])
            reason = str(payload.get("reason") or "")
            usage = _usage(payload)
            outputs = payload.get("outputs") or {}
            if new_state is JobState.PENDING:
                found.append(Phase("requeued", at, attempt, reason, *usage, outputs))
                attempt += 1
            elif new_state.is_terminal:
                found.append(Phase("finished", at, attempt, reason, *usage, outputs))
        elif event_type == "JobArtifactsStored":
            found.append(Phase("artifacts_stored", at, int(payload["attempt"]), artifacts_text(payload["artifacts"])))
        elif event_type == "JobHeld":
            found.append(Phase("held", at, attempt, hold_text(payload["by"], payload.get("reason") or "")))
        elif event_type == "JobLimitsChanged":
            found.append(
                Phase("limits_changed", at, attempt, limits_text(payload["timeout_seconds"], payload["resources"]))
            )
        elif event_type == "JobStopped":
            code = payload.get("exit_code")
            how = "" if code is None else f"exited with code {code}"
            found.append(Phase("stopped", at, attempt, how, *_usage(payload)))
        elif name is not None:
            found.append(Phase(name, at, worker_attempts.get(aggregate_id, attempt)))
            if event_type == "JobProviderSelected" and payload.get("admitted"):
                found.append(Phase("admitted", at, attempt))  # a slot taken at once
    return found


def latest_outputs(phases: Iterable[Phase]) -> Mapping[str, str]:
    """The outputs of the latest attempt that ended (a retried job's next attempt may not
    have yet): an attempt that wrote none has none, whatever an earlier one wrote."""
    ended = [phase for phase in phases if phase.name in ENDED]
    return ended[-1].outputs if ended else {}


def _usage(payload: dict[str, Any]) -> tuple[float | None, int | None]:
    """(CPU seconds, peak memory bytes) of a result's event; (None, None) from a worker
    that could not measure or an event older than the field."""
    used = payload.get("usage") or {}
    return used.get("cpu_seconds"), used.get("peak_memory_bytes")


def waits_in_queue(state: str, attempt: int, phases: Iterable[tuple[str, int]]) -> bool:
    """PENDING and its attempt not admitted: what a hold or a new priority applies to.
    ``phases`` are (name, attempt) pairs."""
    return state == JobState.PENDING.value and (("admitted", attempt) not in set(phases))


def processes_stopping(state: str, attempt: int, phases: Iterable[tuple[str, int]]) -> bool:
    """A job cancelled while it ran whose worker has neither reported its processes'
    end (phase ``stopped``) nor gone (``worker_released``): they are ending in their
    cancel's grace. ``phases`` are (name, attempt) pairs."""
    if state != JobState.CANCELLED.value:
        return False
    this_attempt = {name for name, of in phases if of == attempt}
    return "started" in this_attempt and not this_attempt & {"stopped", "worker_released"}


def stopped_text(attempt: int, phases: Iterable[Mapping[str, Any]]) -> str:
    """How a cancelled job's processes of ``attempt`` ended once told to stop (``exited
    with code 143``): the job keeps no exit code, not having ended of itself. ``phases``:
    JobPhase dicts, as ``-o json`` prints them; '' when they did not report it."""
    said = [p.get("detail", "") for p in phases if p.get("name") == "stopped" and p.get("attempt") == attempt]
    return said[-1] if said else ""


def artifacts_text(artifacts: Iterable[Mapping[str, Any]]) -> str:
    """How many files, how large: ``3 files, 1.5 MiB``."""
    listed = list(artifacts)
    total = sum(int(artifact["size_bytes"]) for artifact in listed)
    return f"{len(listed)} file{'' if len(listed) == 1 else 's'}, {size_text(total)}"


def size_text(size: int) -> str:
    """Bytes for people: ``512 bytes``, ``1.5 KiB``, ``20.0 MiB``."""
    if size < 1024:
        return f"{size} byte{'' if size == 1 else 's'}"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def seconds_text(seconds: float) -> str:
    """A time for people, in the unit that reads best: ``250 ms``, ``12.5 s``, ``45.0 min``, ``31.2 h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def limits_text(timeout_seconds: float, resources: Mapping[str, Any]) -> str:
    """A job's limits (`job update --timeout --cpu …`), for people: ``timeout 2.0 h, 2 CPU,
    1.0 GiB memory`` (what it asks none of left out)."""
    parts = [f"timeout {seconds_text(timeout_seconds)}"]
    if cpu := resources.get("cpu_cores"):
        parts.append(f"{cpu:g} CPU")
    if memory := resources.get("memory_bytes"):
        parts.append(f"{size_text(memory)} memory")
    if disk := resources.get("disk_bytes"):
        parts.append(f"{size_text(disk)} disk")
    return ", ".join(parts)


def usage_text(cpu_seconds: float | None, peak_memory_bytes: int | None) -> str:
    """What an attempt used, for people: ``1.52 s CPU, 45.2 MiB peak memory``; '' when unknown."""
    parts = [] if cpu_seconds is None else [f"{cpu_seconds:.2f} s CPU"]
    if peak_memory_bytes is not None:
        parts.append(f"{peak_memory_bytes / 2**20:.1f} MiB peak memory")
    return ", ".join(parts)


def ran_text(run_seconds: float, attempts: int, cpu_seconds: float | None, peak_memory_bytes: int | None) -> str:
    """How long a job's command ran over all its attempts, and what they used together:
    ``3.2 s over 2 attempts: 0.51 s CPU, 45.2 MiB peak memory``; '' when it never ran."""
    if run_seconds <= 0:
        return ""
    text = seconds_text(run_seconds) + (f" over {attempts} attempts" if attempts > 1 else "")
    used = usage_text(cpu_seconds, peak_memory_bytes)
    return f"{text}: {used}" if used else text


def latest_usage(phases: Iterable[Mapping[str, Any]]) -> str:
    """What the newest attempt that reported it used, and which attempt that was
    (``phases``: JobPhase dicts, as ``-o json`` prints them); '' when none did."""
    text = ""
    for phase in phases:
        used = usage_text(phase.get("cpu_seconds"), phase.get("peak_memory_bytes"))
        text = f"{used} (attempt {phase['attempt']})" if used else text
    return text
