"""Durations as people write them, one reading for every place that takes one: the CLI's
options, the console's form and a cron job's ``@every``."""

from __future__ import annotations

import re

# Plain seconds, or numbers each with its unit, as Go's and systemd's durations (1h30m).
_DURATION = re.compile(r"^\d+(?:\.\d+)?$|^(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds_of(value: str) -> float | None:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w``, ``1h30m`` or plain seconds; None when
    malformed."""
    text = value.strip()
    if not _DURATION.match(text):
        return None
    parts = _DURATION_PART.findall(text)
    return sum(float(number) * _SECONDS[unit.lower()] for number, unit in parts) if parts else float(text)
