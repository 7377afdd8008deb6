"""A job's sagas as a picture: one lane per saga, one bar per step that ran, placed on
a shared time axis. Pure: from the describe data (``JobDescription`` as a dict) to
coordinates the page draws as SVG."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

WIDTH = 1000
LABEL = 215
LANE = 34
BAR = 20
TOP = 24
MIN_BAR = 3.0
TICK_LABEL = 40  # the room a tick's label takes ("1.5min" at the ticks' 10 px)


@dataclass(frozen=True)
class Bar:
    step: str
    state: str
    x: float
    width: float
    seconds: float
    retries: int
    compensated: bool
    failing: bool
    running: bool
    error: str


@dataclass(frozen=True)
class Lane:
    title: str
    state: str
    y: float
    bars: list[Bar]
    not_started: list[str]


@dataclass(frozen=True)
class Tick:
    x: float
    label: str
    # "end" near the right edge: its label goes left of its line (drawn right of it, the
    # last one, at the axis's end, was cut off by the picture's edge).
    anchor: str = "start"


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    lanes: list[Lane]
    ticks: list[Tick]
    seconds: float
    bar_height: int = BAR


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _tick_label(seconds: float) -> str:
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"


def _step_size(span: float) -> float:
    for size in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if span / size <= 8:
            return size
    return span / 8


def timeline(sagas: list[dict[str, Any]], now: datetime) -> Timeline:
    """``sagas`` as DescribeJob returns them; steps still running end at ``now``."""
    starts = [_moment(step.get("started_at")) for saga in sagas for step in saga["steps"]]
    ends = [
        _moment(step.get("completed_at")) or now for saga in sagas for step in saga["steps"] if step.get("started_at")
    ]
    begun = [moment for moment in starts if moment is not None]
    origin = min(begun) if begun else now
    span = max(((max(ends) if ends else now) - origin).total_seconds(), 0.001)
    scale = (WIDTH - LABEL - 10) / span
    lanes = []
    for index, saga in enumerate(sagas):
        y = TOP + index * LANE
        bars, not_started = [], []
        for step in saga["steps"]:
            started = _moment(step.get("started_at"))
            if started is None:
                not_started.append(step["name"])
                continue
            ended = _moment(step.get("completed_at"))
            seconds = ((ended or now) - started).total_seconds()
            failing = step["state"] in ("FAILED", "COMPENSATION_FAILED") or (
                bool(step.get("error_message")) and step["state"] != "COMPLETED"
            )
            bars.append(
                Bar(
                    step=step["name"],
                    state=step["state"],
                    x=LABEL + (started - origin).total_seconds() * scale,
                    width=max(seconds * scale, MIN_BAR),
                    seconds=max(seconds, 0.0),
                    retries=int(step.get("retry_count") or 0),
                    compensated=bool(step.get("compensated")),
                    failing=failing,
                    running=ended is None,
                    error=step.get("error_message") or "",
                )
            )
        lanes.append(Lane(f"{saga['saga_type']} #{saga['attempt']}", saga["state"], y, bars, not_started))
    size = _step_size(span)
    ticks = [_tick(LABEL + i * size * scale, _tick_label(i * size)) for i in range(int(span / size) + 1)]
    return Timeline(WIDTH, TOP + len(sagas) * LANE + 10, lanes, ticks, span)


def _tick(x: float, label: str) -> Tick:
    return Tick(x, label, "end" if x + TICK_LABEL > WIDTH else "start")
