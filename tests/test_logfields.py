"""The server's log: a record a line in either format, and each record says what it is about."""

from __future__ import annotations

import json
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from hodei import config
from hodei.errors import InvalidInput
from hodei.logfields import About, about, carried, formatter

FORGED = "bad\n2026-12-05 04:00:00,000 ERROR hodei.server: forged\x1b[2J"


def _record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    record = logging.LogRecord("hodei.test", logging.WARNING, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]
    About().filter(record)
    return record


def _failed() -> logging.LogRecord:
    try:
        raise ValueError("what broke")
    except ValueError:
        return _record("step %s raised", "s", exc_info=sys.exc_info())


def test_a_text_record_is_one_line_whatever_its_message_holds() -> None:
    """A message with text from outside can neither forge a record nor act on a terminal."""
    text = formatter("text")
    _, _, written = text.format(_record("worker %s: %s", "w-1", FORGED)).split(" ", 2)  # after its date and time
    assert written == "WARNING hodei.test: worker w-1: bad\\n2026-12-05 04:00:00,000 ERROR hodei.server: forged\\x1b[2J"
    lines = text.format(_failed()).splitlines()
    assert lines[0].endswith(" WARNING hodei.test: step s raised")
    assert lines[1] == "Traceback (most recent call last):"  # a traceback keeps its lines
    assert lines[-1] == "ValueError: what broke"


def test_a_json_record_is_one_object_a_line_with_what_it_is_about() -> None:
    with about(job_id="j-1", worker_id="w-1"), about(event="JobCreated", job_id="j-2"):
        written = formatter("json").format(_record("worker %s: %s", "w-1", FORGED))
    assert "\n" not in written and "\x1b" not in written
    record = json.loads(written)
    assert record.pop("message") == "worker w-1: " + FORGED
    assert datetime.fromisoformat(record.pop("time")).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert record == {
        "level": "WARNING",
        "logger": "hodei.test",
        "thread": threading.current_thread().name,
        "job_id": "j-2",  # the inner about's
        "worker_id": "w-1",
        "event": "JobCreated",
    }
    failed = json.loads(formatter("json").format(_failed()))
    assert failed["message"] == "step s raised"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ValueError: what broke")
    assert "job_id" not in failed  # outside every about


def test_fields_end_with_their_about_and_reach_another_thread_only_when_carried() -> None:
    def fields(_: object) -> dict[str, object]:
        record = _record("x")
        return {key: getattr(record, key) for key in ("job_id", "saga_id") if hasattr(record, key)}

    with ThreadPoolExecutor(1) as pool, about(saga_id="s-1", job_id=None):
        assert fields(None) == {"saga_id": "s-1"}  # None: left unset
        assert pool.submit(fields, None).result() == {}
        assert pool.submit(carried(fields), None).result() == {"saga_id": "s-1"}
    assert fields(None) == {}
    given = logging.makeLogRecord({"msg": "x", "job_id": "given"})  # as a call's extra= makes it
    with about(job_id="j-1"):
        About().filter(given)
    assert given.__dict__["job_id"] == "given"  # a call's own extra wins
    with pytest.raises(ValueError, match="no log field"), about(job="j-1"):
        pass


def test_the_log_settings_are_checked() -> None:
    assert config.log_settings({}) == ("text", "info")
    assert config.log_settings({"HODEI_LOG_FORMAT": " JSON ", "HODEI_LOG_LEVEL": "Warning"}) == ("json", "warning")
    with pytest.raises(InvalidInput, match="HODEI_LOG_FORMAT must be one of text, json, got `xml`"):
        config.log_settings({"HODEI_LOG_FORMAT": "xml"})
    with pytest.raises(InvalidInput, match="HODEI_LOG_LEVEL must be one of debug, info, warning, error, got `loud`"):
        config.log_settings({"HODEI_LOG_LEVEL": "loud"})
