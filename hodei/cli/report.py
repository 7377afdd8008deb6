"""``hodei-jobs-cli report``: what ended jobs used, by submitter, provider, pool, state,
name, label or period (``hodei.report``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from hodei._proto import report_pb2
from hodei.cli.client import Client
from hodei.cli.jobs import add_job_filters
from hodei.cli.parsing import since
from hodei.cli.terminal import Terminal, stamp
from hodei.domain.phases import seconds_text, size_text
from hodei.domain.spec import LabelSelector
from hodei.report import DEFAULT_WINDOW, GROUPINGS, LABEL, MOST_GROUPS, Grouping, window
from hodei.wire import message_dict

_HEADERS = [
    "JOBS",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "ATTEMPTS",
    "RUN TIME",
    "CPU USED",
    "CPU ASKED",
    "CPU EFF",
    "PEAK MEMORY",
    "WAIT P50",
]


def _check(args: argparse.Namespace) -> None:
    """Refuses before connecting what the server would (its own rules)."""
    Grouping.of(args.by)
    window(args.since, args.until, datetime.now(UTC))
    LabelSelector.of(args.label or [])


def report(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = report_pb2.ReportJobsRequest(
        by=args.by,
        provider=args.provider or "",
        name=args.name or "",
        label_selector=args.label or [],
        submitter=args.submitter or "",
        mine=args.mine,
    )
    if args.since is not None:
        request.since.FromDatetime(args.since)
    if args.until is not None:
        request.until.FromDatetime(args.until)
    found = client.call(client.report.ReportJobs, request)
    if term.json:
        term.data(message_dict(found))
        return 0
    term.line(f"Jobs that ended from {stamp(found.since, 'seconds')} to {stamp(found.until, 'seconds')}, by {found.by}")
    rows = [[_key(group), *_figures(group)] for group in found.groups]
    rows.append(["(all)", *_figures(found.total)])
    term.table([found.by.upper(), *_HEADERS], rows)
    if found.groups_left_out:
        term.line(f"… and {found.groups_left_out} more groups (the {MOST_GROUPS} that ran longest are shown)")
    return 0


def _key(group: report_pb2.UsageGroup) -> str:
    return "(none)" if group.none else group.key


def _figures(group: report_pb2.UsageGroup) -> list[str]:
    return [
        str(group.jobs),
        str(group.succeeded),
        str(group.failed),
        str(group.cancelled),
        str(group.timed_out),
        str(group.attempts),
        seconds_text(group.run_seconds),
        seconds_text(group.cpu_seconds) if group.HasField("cpu_seconds") else "-",
        seconds_text(group.cpu_asked_seconds) if group.HasField("cpu_asked_seconds") else "-",
        f"{group.cpu_efficiency:.0%}" if group.HasField("cpu_efficiency") else "-",
        size_text(group.peak_memory_bytes) if group.HasField("peak_memory_bytes") else "-",
        seconds_text(group.wait_p50_seconds) if group.HasField("wait_p50_seconds") else "-",
    ]


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "report",
        help="what ended jobs used, by submitter, provider, pool, state, name, label, day, week or month (sreport)",
        description="Jobs that ended in a window (default: the last "
        f"{DEFAULT_WINDOW.days} days), summed by a grouping: how many ended and how; ATTEMPTS, the attempts "
        "they began (retries and runs after a lost worker each count); RUN TIME, how long "
        "their commands ran, every attempt; CPU USED, what their workers measured (- where none did: "
        "a sim worker, an agent that could not); CPU ASKED, --cpu times the run time; CPU EFF, CPU used "
        "over asked for the jobs that asked and measured (seff); PEAK MEMORY, the most one job held; "
        "WAIT P50, the median wait from submission to the start of its last attempt. The read role.",
    )
    parser.add_argument(
        "--by",
        default="submitter",
        metavar="GROUPING",
        help=f"what the rows are: {', '.join(GROUPINGS)} (UTC), or {LABEL}KEY, a label's values (default: submitter)",
    )
    parser.add_argument(
        "--since", type=since, metavar="WHEN", help="jobs that ended since then: 1h, 2d (ago) or an ISO 8601 time"
    )
    parser.add_argument(
        "--until", type=since, metavar="WHEN", help="jobs that ended before then: 1h, 2d (ago) or an ISO 8601 time"
    )
    add_job_filters(parser, submitted_since=False, state=False)
    parser.set_defaults(handler=report, prepare=_check)
