"""The console's timeline layout: lanes, bars and marks from the describe data."""

from __future__ import annotations

from datetime import UTC, datetime

from hodei.console.timeline import LABEL, MIN_BAR, WIDTH, timeline

NOW = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)


def step(name: str, state: str, started: str | None, completed: str | None, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "state": state,
        "started_at": started and f"2026-01-01T12:00:{started}Z",
        "completed_at": completed and f"2026-01-01T12:00:{completed}Z",
        "retry_count": 0,
        "compensated": False,
        "error_message": "",
        **extra,
    }


def test_bars_share_one_axis_and_mark_what_failed() -> None:
    sagas = [
        {
            "saga_type": "PROVISIONING",
            "attempt": 1,
            "state": "FAILED",
            "steps": [
                step("select_provider", "COMPENSATED", "00.000", "00.010", compensated=True),
                step("wait_for_slot", "FAILED", "00.010", "04.000", retry_count=2, error_message="no slot"),
                step("create_worker", "PENDING", None, None),
            ],
        },
        {
            "saga_type": "EXECUTION",
            "attempt": 1,
            "state": "IN_PROGRESS",
            "steps": [step("wait_for_result", "IN_PROGRESS", "05.000", None)],
        },
    ]
    drawn = timeline(sagas, NOW)
    provisioning, execution = drawn.lanes
    assert drawn.seconds == 10.0  # from the first start to now (a step still runs)
    scale = (WIDTH - LABEL - 10) / 10.0
    selected, waited = provisioning.bars
    assert (selected.x, selected.width) == (LABEL, MIN_BAR)  # 10 ms is still visible
    assert selected.compensated and not selected.failing
    assert waited.failing and waited.retries == 2 and waited.error == "no slot"
    assert waited.x == LABEL + 0.01 * scale and abs(waited.seconds - 3.99) < 1e-9
    assert provisioning.not_started == ["create_worker"]
    (running,) = execution.bars
    assert running.running and running.seconds == 5.0 and running.x == LABEL + 5 * scale
    assert execution.y > provisioning.y and drawn.height > execution.y
    assert [tick.label for tick in drawn.ticks][:3] == ["0ms", "2s", "4s"]
    # The axis's last label, at its end, is drawn left of its line: right of it, it was cut off.
    assert (drawn.ticks[-1].label, drawn.ticks[-1].anchor) == ("10s", "end")
    assert {tick.anchor for tick in drawn.ticks[:-1]} == {"start"}


def test_no_saga_yet_is_an_empty_picture() -> None:
    drawn = timeline([], NOW)
    assert drawn.lanes == [] and drawn.ticks[0].x == LABEL
