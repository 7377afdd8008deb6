"""``hodei-jobs-cli token …`` and ``whoami``: API tokens through the API (admin role)."""

from __future__ import annotations

import argparse
from typing import Any

from hodei._proto import access_pb2
from hodei.cli.client import Client
from hodei.cli.parsing import parse_duration
from hodei.cli.terminal import Terminal, when
from hodei.wire import message_dict


def token(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if args.action == "create":
        request = access_pb2.CreateTokenRequest(
            name=args.name, role=args.role, expires_in_seconds=parse_duration(args.expires) or 0.0
        )
        created = client.call(client.access.CreateToken, request)
        if term.json:
            term.data({**message_dict(created.token), "token": created.secret})
        else:
            term.value(created.secret)
            term.info(f"created token {created.token.name} ({created.token.role}); it is shown only once")
        return 0
    if args.action == "revoke":
        revoked = client.call(client.access.RevokeToken, access_pb2.RevokeTokenRequest(name=args.name))
        if term.json:
            term.data(message_dict(revoked))
        else:
            term.success(f"revoked token {revoked.name}")
        return 0
    tokens = client.call(client.access.ListTokens, access_pb2.ListTokensRequest()).tokens
    if term.json:
        term.data([message_dict(t) for t in tokens])
        return 0
    term.table(
        ["NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "REVOKED", "CREATED BY", "REVOKED BY"],
        [
            [
                t.name,
                t.role,
                when(t, "created_at", "seconds"),
                when(t, "expires_at", "seconds", empty="never"),
                when(t, "last_used_at", "seconds", empty="never"),
                when(t, "revoked_at", "seconds"),
                t.created_by,
                t.revoked_by or "-",
            ]
            for t in tokens
        ],
    )
    return 0


def whoami(client: Client, term: Terminal, _: argparse.Namespace) -> int:
    me = client.call(client.access.WhoAmI, access_pb2.WhoAmIRequest())
    if term.json:
        term.data(message_dict(me))
    elif me.job_id:
        term.line(f"{me.name} ({me.role}), by the API token of job {me.job_id}")
    elif me.authenticated:
        term.line(f"{me.name} ({me.role})")
    else:
        term.line(f"{me.name}: the server runs without authentication")
    if not term.json:
        profile = client.connection.profile
        term.info(f"at {client.address}" + (f" (profile {profile})" if profile else ""))
    return 0


def add_token_commands(commands: Any, about: str) -> list[argparse.ArgumentParser]:
    """``token create|list|revoke``: the same words for hodei-jobs-cli (through the API)
    and hodei-server (straight in the database). Returns the three parsers."""
    token_parser = commands.add_parser("token", help=about)
    actions = token_parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token and print it, alone, on stdout: it is shown once")
    create.add_argument("--name", required=True, help="who or what holds it (recorded as the actor of its calls)")
    create.add_argument("--role", required=True, help="read, submit, operate or admin")
    create.add_argument("--expires", help="e.g. 30d, 12h, 3600 (default: never)")
    listing = actions.add_parser("list", help="every token, revoked ones included")
    revoke = actions.add_parser("revoke", help="refuse the token from now on")
    revoke.add_argument("name", help="the token's name")
    return [create, listing, revoke]


def add_commands(commands: Any) -> None:
    for parser in add_token_commands(commands, "API tokens (admin role)"):
        parser.set_defaults(handler=token)
    commands.add_parser("whoami", help="the token's name and role").set_defaults(handler=whoami)
