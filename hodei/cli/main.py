"""Entry point of ``hodei-jobs-cli``."""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from hodei.cli import admin, jobs
from hodei.cli.client import DEFAULT_SERVER, SERVER_VARIABLE, Client
from hodei.cli.terminal import Terminal
from hodei.errors import HodeiError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="hodei-jobs-cli", description="Submit and inspect Hodei jobs.")
    root.add_argument(
        "--server",
        "-s",
        default=os.environ.get(SERVER_VARIABLE, DEFAULT_SERVER),
        help=f"server address host:port (env {SERVER_VARIABLE}; default {DEFAULT_SERVER})",
    )
    root.add_argument("--output", "-o", choices=["text", "json"], default="text", help="output format")
    commands = root.add_subparsers(dest="command", required=True)
    jobs.add_commands(commands)
    admin.add_commands(commands)
    return root


# Options whose values often start with "-" (the seed writes --args "-c '…'"): argparse
# would take such a value for an option unless it is attached with "=".
_DASHED_VALUES = {"--args", "-a", "--command", "-c"}


# Global options people also type after the command (`job list -o json`).
_GLOBAL = {"--output", "-o", "--server", "-s"}


def normalise_argv(argv: list[str]) -> list[str]:
    """Attaches dashed values (``--args=-c …``) and moves global options to the front."""
    globals_: list[str] = []
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        option = item.split("=", 1)[0]
        if item in _DASHED_VALUES:
            value = next(items, None)
            rest.append(item if value is None else f"{item}={value}")
        elif option in _GLOBAL:
            globals_.append(item)
            if "=" not in item:
                value = next(items, None)
                if value is not None:
                    globals_.append(value)
        else:
            rest.append(item)
    return globals_ + rest


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(normalise_argv(sys.argv[1:] if argv is None else argv))
    term = Terminal(args.output)
    if hasattr(args, "job_id_flag"):
        args.job_id = args.job_id_flag or args.job_id_positional
        if not args.job_id:
            term.abort("give the job id: --id ID", code=2)
    if getattr(args, "timeout", 1) is not None and getattr(args, "timeout", 1) <= 0:
        term.abort(f"--timeout must be a positive number of seconds, got {args.timeout:g}", code=2)
    client = Client(args.server)
    try:
        code = args.handler(client, term, args)
    except HodeiError as exc:
        term.abort(exc.message, code=2)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            term.abort(f"cannot reach the server at {client.address}: {exc.details()}")
        term.abort(f"{exc.details()} ({exc.code().name})")
    except KeyboardInterrupt:
        code = 130
    finally:
        client.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
