"""``report``: what ended jobs used, summed by a grouping (Slurm's sreport over sacct's
rows): how many ended and how, how long their commands ran, the CPU and memory their
workers measured, the CPU they asked for, how long they waited to start.

Each job's own sums (``jobs.run_seconds``, ``cpu_seconds``, ``peak_memory_bytes``) are
projected from its events as each attempt ends (sql/033); a report only adds them up over
the jobs that ended in its window, so it reads no event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from hodei.domain.spec import label_key_problem
from hodei.errors import InvalidInput
from hodei.store.db import fetch_all
from hodei.store.readmodels import JobFilters, job_list_params

# What a report's groups may be; ``label:KEY`` too (the values of one label). The
# periods (UTC) read in time's order, the others the longest-running first.
PERIODS = ("day", "week", "month")
GROUPINGS = ("submitter", "provider", "pool", "state", "name", *PERIODS)
LABEL = "label:"
# The window when none is given: the week before its end.
DEFAULT_WINDOW = timedelta(days=7)
MOST_GROUPS = 1000


@dataclass(frozen=True)
class Grouping:
    """What a report groups jobs by: one of GROUPINGS, or a label's values (``label``)."""

    kind: str
    label: str | None = None

    @classmethod
    def of(cls, text: str) -> Grouping:
        """``--by`` as people write it: a grouping's name or ``label:KEY``; "" is submitter."""
        text = text.strip() or "submitter"
        if text.startswith(LABEL):
            key = text[len(LABEL) :].strip()
            if problem := label_key_problem(key):
                raise InvalidInput(f"report by `{text}`: {problem}")
            return cls("label", key)
        if text not in GROUPINGS:
            raise InvalidInput(f"report by `{text}`: expected one of {', '.join(GROUPINGS)} or label:KEY")
        return cls(text)

    @property
    def text(self) -> str:
        return f"{LABEL}{self.label}" if self.label is not None else self.kind


def window(since: datetime | None, until: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The jobs a report covers end at or after ``since`` and before ``until`` (default:
    ``now``, and DEFAULT_WINDOW before it); an empty or inverted window is refused."""
    end = until or now
    start = since or end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidInput(f"the report's start ({start.isoformat()}) must be before its end ({end.isoformat()})")
    return start, end


@dataclass(frozen=True)
class UsageGroup:
    """One group's sums (``total``: every job of the window). None where no job of the
    group said (CPU measured, CPU asked for, a start to wait for)."""

    total: bool
    key: str | None
    jobs: int
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int
    # The attempts its jobs began: a retried job's each, one run again after its worker was
    # lost too; a job that never began none.
    attempts: int
    run_seconds: float
    cpu_seconds: float | None
    jobs_measured: int
    cpu_asked_seconds: float | None
    cpu_efficiency: float | None
    peak_memory_bytes: int | None
    wait_p50_seconds: float | None
    # How many groups there are in all (the same in every row).
    groups: int


@dataclass(frozen=True)
class Report:
    groups: list[UsageGroup]
    total: UsageGroup
    # Groups past MOST_GROUPS, not in ``groups``.
    left_out: int


def report_params(grouping: Grouping, since: datetime, until: datetime, filters: JobFilters) -> dict[str, Any]:
    """The parameters of ``jobs_report`` (also what bench-console times)."""
    return {
        **job_list_params(None, 0, 0, filters),
        "by": grouping.kind,
        "label": grouping.label,
        "ended_since": since,
        "ended_until": until,
        "most": MOST_GROUPS,
    }


def report(pool: ConnectionPool, grouping: Grouping, since: datetime, until: datetime, filters: JobFilters) -> Report:
    # The total comes first, also of a window where no job ended (the empty grouping set's row).
    total, *groups = fetch_all(pool, "jobs_report", report_params(grouping, since, until, filters), UsageGroup)
    return Report(groups, total, total.groups - len(groups))
