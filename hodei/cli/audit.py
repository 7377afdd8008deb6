"""``hodei-jobs-cli audit``: who changed the platform's configuration, and how."""

from __future__ import annotations

import argparse
from typing import Any

from hodei._proto import audit_pb2
from hodei.audit import KINDS, MAX_CHANGES, check_kinds, check_limit
from hodei.cli.client import Client
from hodei.cli.parsing import add_limit, comma_list, since
from hodei.cli.terminal import Terminal, when
from hodei.wire import message_dict


def _check(args: argparse.Namespace) -> None:
    """Refuses before connecting what the server would (its own rules)."""
    check_kinds(args.kind)
    check_limit(args.limit)


def audit(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = audit_pb2.ListChangesRequest(
        kinds=args.kind, actor=args.actor or "", include_system=args.system, limit=args.limit
    )
    if args.since is not None:
        request.since.FromDatetime(args.since)
    changes = list(client.call(client.audit.ListChanges, request).changes)
    if term.json:
        term.data([message_dict(change) for change in changes])
        return 0
    term.table(
        ["TIME", "BY", "WHAT", "CHANGE"],
        [[when(c, "at"), c.actor or "-", f"{c.kind} {c.subject}", c.change] for c in changes],
    )
    return 0


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="who changed providers, pools, limits, webhooks and cron jobs, and how (the operate role)",
        description="Newest first, from the event log. A job's own changes: job events; tokens: token list.",
    )
    parser.add_argument(
        "--kind",
        type=comma_list,
        default=[],
        metavar="KINDS",
        help=f"only these, comma-separated: {', '.join(KINDS)} (default: all)",
    )
    parser.add_argument("--actor", "-u", metavar="NAME", help="only this caller's changes (a token's name)")
    parser.add_argument(
        "--since", type=since, metavar="WHEN", help="only changes since then: 1h, 2d (ago) or an ISO 8601 time"
    )
    parser.add_argument(
        "--system", action="store_true", help="the platform's own changes too (providers' health, as probes find it)"
    )
    add_limit(parser, 100, f"changes (at most {MAX_CHANGES})")
    parser.set_defaults(handler=audit, prepare=_check)
