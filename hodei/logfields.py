"""How the server's log is written, and what each record is about.

A record says which job, saga, worker, event or API call it was written for without its
message having to: code that works for one of them wraps that work in ``about(...)``, and
every record written inside (on the same thread or task, or on a step action's thread
through ``carried``) carries those fields. ``HODEI_LOG_FORMAT=json`` writes them as keys of
a JSON object a line, for a collector (Loki, Elasticsearch, journald) to select one job's
records across servers; the text format keeps its line as it was, since the messages that
matter name their job or worker already.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TypeVar

from hodei.cli.terminal import one_line

# The fields ``about`` may set; a JSON record has each as a key where one is set.
FIELDS = ("job_id", "saga_id", "worker_id", "event", "rpc", "caller")
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

_ABOUT: ContextVar[Mapping[str, str]] = ContextVar("log_about", default=MappingProxyType({}))

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def about(**fields: object) -> Iterator[None]:
    """Records written inside carry ``fields`` (None: left unset), beside the ones an outer
    ``about`` set."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"no log field {sorted(unknown)}; fields: {', '.join(FIELDS)}")
    token = _ABOUT.set({**_ABOUT.get(), **{key: str(value) for key, value in fields.items() if value is not None}})
    try:
        yield
    finally:
        _ABOUT.reset(token)


def carried(run: Callable[[T], R]) -> Callable[[T], R]:
    """``run`` for another thread, its records about what the caller's are about (a thread
    of a pool starts with no context of its own)."""
    fields = _ABOUT.get()

    def with_fields(argument: T) -> R:
        token = _ABOUT.set(fields)
        try:
            return run(argument)
        finally:
            _ABOUT.reset(token)

    return with_fields


class About(logging.Filter):
    """Puts the current ``about`` fields on each record (a field the call's ``extra`` gave
    wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _ABOUT.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _Lines(logging.Formatter):
    """A record a line: its message's control characters escaped, newlines too (a
    traceback keeps its lines). A message carries text from outside (a worker's report,
    a provider's or PostgreSQL's error): it can then neither forge a record of the log
    nor act on the terminal that shows it, and a reader (journald, a collector) sees one
    record where psycopg's two-line errors made two."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def formatter(form: str) -> logging.Formatter:
    """``text``: a person's line. ``json``: an object a line (JSON escapes every control
    character: no record can forge another) with time (UTC, ISO 8601), level, logger,
    thread, message, the ``about`` fields set, and ``exception`` with its traceback where
    one was logged."""
    if form == "json":
        from pythonjsonlogger.json import JsonFormatter  # 20 ms of imports a text log never needs

        return JsonFormatter(
            "%(levelname)s %(name)s %(threadName)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "threadName": "thread", "exc_info": "exception"},
            timestamp="time",
            json_ensure_ascii=False,
        )
    return _Lines("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(form: str, level: str) -> None:
    """The process's log on stderr, in ``form`` (one of FORMATS), from ``level`` up."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(form))
    handler.addFilter(About())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
