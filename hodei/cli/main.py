"""Entry point of ``hodei-jobs-cli``."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from importlib.metadata import version
from typing import Any, NoReturn

# gRPC's core logs connection failures itself; the CLI explains them in one line instead.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import shtab
from grpc_health.v1 import health_pb2

from hodei.cli import access, admin, artifacts, audit, cron, jobs, report, sagas, settings, webhooks, workflows
from hodei.cli.client import DEFAULT_SERVER, PROFILE_VARIABLE, REFUSED, SERVER_VARIABLE, Client, Connection
from hodei.cli.jobs import (
    EXIT_CANCELLED,
    EXIT_GAVE_UP,
    EXIT_INTERRUPTED,
    EXIT_PLATFORM,
    EXIT_TIMEOUT,
    LATEST,
    StoppedWaiting,
    latest_job,
    selects,
)
from hodei.cli.shapes import SHAPES
from hodei.cli.terminal import Terminal, reader_gone
from hodei.errors import HodeiError, StoreUnavailable

# How long the CLI gives an unreachable server before it says so.
CONNECT_WITHIN = 2.0

EPILOG = f"""examples:
  JOB_ID=$(hodei-jobs-cli job run --provider docker --command "echo hello")
  hodei-jobs-cli job run --provider local --command "make test" --follow
  hodei-jobs-cli job run --image python:3.12-slim --command "python -V" --follow   # in an image of its own
  hodei-jobs-cli job describe $JOB_ID        # phases, workers, sagas, steps, audit
  hodei-jobs-cli job list --state FAILED -o json
  hodei-jobs-cli job cancel --state PENDING -l team=data   # every job the selection matches
  hodei-jobs-cli --server build-box job logs 3f2a9c1e   # any unique 8-character id prefix
  hodei-jobs-cli job logs @latest --tail 50 --follow    # the newest job's last lines, then live
  hodei-jobs-cli job logs $JOB_ID --attempt 2           # one attempt of a retried job
  hodei-jobs-cli job logs $JOB_ID --since 10m           # what it printed in the last ten minutes
  hodei-jobs-cli job run -p local --script map.sh --array 0-99              # one job per index
  hodei-jobs-cli job run -p local --script reduce.sh --after-array @latest  # once all of them succeeded
  hodei-jobs-cli job run -p local --script deploy.sh --after $JOB_ID --begin 2h  # not before, and only if it succeeded
  hodei-jobs-cli cron create nightly --schedule "0 3 * * *" --tz Europe/Madrid -p docker --script backup.sh
  hodei-jobs-cli job run -p docker --script deploy.sh --idempotency-key "deploy-$GIT_SHA"  # run twice: one job
  hodei-jobs-cli job signal $JOB_ID --signal USR1   # to its processes, which go on: a checkpoint, logs reopened
  hodei-jobs-cli limit set '*' --max-submitted 1000   # an operator: past 1000 jobs not ended, submissions refused

exit codes:
  0      done (with --wait/--follow: the job succeeded)
  1      the server could not be reached, or gave up on a change others kept making first (try again)
  1-123  with --wait/--follow: the job's own exit code
  2      refused: bad input, unknown id, no permission
  {EXIT_TIMEOUT}    the job timed out
  {EXIT_PLATFORM}    the platform could not run the job (no provider, worker lost, ...)
  {EXIT_CANCELLED}    the job was cancelled (a job of a file run skipped because another ended otherwise counts 0)
  {EXIT_INTERRUPTED}    Ctrl-C while waiting: the job keeps running
  {EXIT_GAVE_UP}    gave up waiting: the server did not answer for minutes

shell completion:
  hodei-jobs-cli completion bash > /etc/bash_completion.d/hodei-jobs-cli
  hodei-jobs-cli completion zsh > "${{fpath[1]}}/_hodei-jobs-cli"
"""

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command or choice, and a value such as
    `-5s` taken as the value it is: Python 3.11's argparse reads only plain negative numbers
    as values and took `--artifacts-expire -5s` for an option, hiding our reason for refusing
    it behind "expected one argument" (3.13's argparse matches these as we do)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        found = _INVALID_CHOICE.search(message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="hodei-jobs-cli",
        description="Submit and inspect Hodei jobs. Settings: flag, then environment, then "
        "~/.config/hodei/config.toml (server, token, tls_ca, tls_cert, tls_key, tls_server_name; "
        "a [profiles.NAME] table of them for each installation: --profile).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"hodei-jobs-cli {version('hodei-jobs')}")
    root.add_argument(
        "--server",
        "-s",
        help=f"server address host[:port] (env {SERVER_VARIABLE}; default {DEFAULT_SERVER})",
    )
    root.add_argument(
        "--profile",
        help=f"the config file's [profiles.NAME] settings (server, token, TLS): one installation of several "
        f"(env {PROFILE_VARIABLE}; the file's `profile` names the one used by default)",
    )
    root.add_argument("--token", help="API token (env HODEI_TOKEN)")
    root.add_argument(
        "--tls-ca", help="CA bundle that signed the server's certificate: turns on TLS (env HODEI_TLS_CA)"
    )
    root.add_argument("--tls-cert", help="client certificate, for mutual TLS (env HODEI_CLIENT_CERT)")
    root.add_argument("--tls-key", help="private key of --tls-cert (env HODEI_CLIENT_KEY)")
    root.add_argument("--output", "-o", choices=["text", "json"], default="text", help="output format")
    commands = root.add_subparsers(dest="command", required=True)
    job = jobs.add_commands(commands)
    sagas.add_commands(commands, job)
    artifacts.add_commands(job)
    workflows.add_commands(job)
    admin.add_commands(commands)
    access.add_commands(commands)
    cron.add_commands(commands)
    webhooks.add_commands(commands)
    audit.add_commands(commands)
    report.add_commands(commands)
    settings.add_commands(commands)
    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=["bash", "zsh"], help="bash or zsh")
    schema = commands.add_parser("schema", help="the JSON Schema of a command's -o json output")
    schema.add_argument("of", nargs="?", metavar="COMMAND", help='e.g. "job get"; without it, the commands')
    return root


# Options whose values often start with "-" (the seed writes --args "-c '…'"): argparse
# would take such a value for an option unless it is attached with "=".
_DASHED_VALUES = {"--args", "-a", "--command", "-c"}


# Global options people also type after the command (`job list -o json`).
_GLOBAL = {"--output", "-o", "--server", "-s", "--profile", "--token", "--tls-ca", "--tls-cert", "--tls-key"}


def command_after(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``job exec ID [options] -- COMMAND ...``: the words after the first ``--`` are the
    command's, never ours (argparse would read options among them, or refuse them); None
    for any other command."""
    if "--" not in argv:
        return argv, None
    end = argv.index("--")
    words = argv[:end]
    if "exec" in words and "job" in words[: words.index("exec")]:
        return words, argv[end + 1 :]
    return argv, None


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
    root = parser()
    words, command = command_after(sys.argv[1:] if argv is None else argv)
    args = root.parse_args(normalise_argv(words))
    if command is not None:
        args.command_argv = command
    term = Terminal(args.output)
    if args.command in ("completion", "schema", "config"):
        sys.exit(without_server(root, term, args))
    if hasattr(args, "job_id_flag"):
        args.job_id = args.job_id_flag or args.job_id_positional
        if not args.job_id and not selects(args):
            term.abort("give the job id: --id ID", code=2)
    for name in ("timeout", "queue_timeout"):  # 0 would go out as unset: the default, or no limit
        seconds = getattr(args, name, None)
        if seconds is not None and not seconds > 0:
            term.abort(f"--{name.replace('_', '-')} must be a positive number of seconds, got {seconds:g}", code=2)
    try:
        if hasattr(args, "prepare"):
            args.prepare(args)
        client = Client(
            Connection.resolve(
                {
                    "server": args.server,
                    "token": args.token,
                    "tls_ca": args.tls_ca,
                    "tls_cert": args.tls_cert,
                    "tls_key": args.tls_key,
                },
                args.profile,
            )
        )
    except HodeiError as exc:
        term.abort(exc.message, code=2)
    try:
        reachable(client)
        more_ids = getattr(args, "more_ids", [])
        if LATEST in (getattr(args, "job_id", None), *more_ids):  # read once, for every place it is given
            latest = latest_job(client)
            args.job_id = latest if args.job_id == LATEST else args.job_id
            args.more_ids = [latest if job_id == LATEST else job_id for job_id in more_ids]
        code = args.handler(client, term, args)
    except StoppedWaiting as exc:
        term.abort(exc.message, code=exc.code)
    except Unreachable as exc:
        term.abort(str(exc))
    except HodeiError as exc:
        term.abort(exc.message, code=2)
    except grpc.RpcError as exc:
        term.abort(explain(exc, client.connection), code=2 if exc.code() in REFUSED else 1)
    except BrokenPipeError:
        code = reader_gone()
    except KeyboardInterrupt:
        term.abort("interrupted", code=EXIT_INTERRUPTED)
    finally:
        client.close()
    sys.exit(code)


def without_server(root: argparse.ArgumentParser, term: Terminal, args: argparse.Namespace) -> int:
    """The commands that call no server: completion scripts, output schemas, settings."""
    if args.command == "completion":
        print(shtab.complete(root, shell=args.shell))
        return 0
    if args.command == "schema":
        return print_schema(args.of)
    try:
        return settings.config(term, args)
    except HodeiError as exc:
        term.abort(exc.message, code=2)


def print_schema(command: str | None) -> int:
    if command is None:
        for name, (_, lines) in SHAPES.items():
            print(f"{name}{'  (one object per line)' if lines else ''}")
        return 0
    if command not in SHAPES:
        close = difflib.get_close_matches(command, list(SHAPES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else " (`hodei-jobs-cli schema` lists them)"
        print(f"hodei-jobs-cli: error: no JSON shape for {command!r}{hint}", file=sys.stderr)
        return 2
    shape, _ = SHAPES[command]
    print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **shape}, indent=2))
    return 0


class Unreachable(Exception):
    """The server did not answer within seconds."""


def reachable(client: Client) -> None:
    """Fails within seconds, naming the address, when the server does not answer: a call
    to a silent address would otherwise wait for its whole deadline."""
    try:
        grpc.channel_ready_future(client.channel).result(timeout=CONNECT_WITHIN)
    except grpc.FutureTimeoutError:
        # One short call, for the reason (a refused connection, an untrusted certificate).
        try:
            client.call(client.health.Check, health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            raise Unreachable(
                f"cannot reach the server at {client.address}: no answer within {CONNECT_WITHIN + 1:g}s "
                f"(is it running there? --server or {SERVER_VARIABLE} names another)"
            ) from None


def explain(exc: grpc.RpcError, connection: Connection) -> str:
    """One line a person can act on."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.CANCELLED:  # not by us: Ctrl-C is a KeyboardInterrupt
        return (
            f"the server at {connection.server} dropped the call unanswered (CANCELLED): more calls were waiting "
            "for it than it takes (gRPC drops one waiting 30 s, or past its queue), or it is stopping; try again"
        )
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and details in ("", "Deadline Exceeded"):
        # The server said nothing: gRPC gave up on it (the server's own DEADLINE_EXCEEDED, a
        # worker that did not answer `job exec`, says why in its words, below).
        return (
            f"the server at {connection.server} did not answer in time (DEADLINE_EXCEEDED): it is overloaded, or "
            "waiting on PostgreSQL (its log says; `/readyz` too); a change asked for may still be made: look before "
            "asking again"
        )
    if exc.code() != grpc.StatusCode.UNAVAILABLE or details.startswith(StoreUnavailable.PREFIX):
        return f"{details} ({exc.code().name})"
    where = f"cannot reach the server at {connection.server}"
    lowered = details.lower()
    if "certificate has expired" in lowered:
        return f"{where}: its TLS certificate has expired (or this machine's clock is wrong)"
    # A CA other than the signer: unknown to us, or one of the same name (another key).
    if any(said in lowered for said in ("certificate_verify_failed", "certificate verify failed", "signature failure")):
        return f"{where}: its TLS certificate is not trusted; pass --tls-ca with the CA that signed it"
    closed = "Socket closed" in details or "handshake" in lowered
    if "WRONG_VERSION_NUMBER" in details:
        return f"{where}: the server does not speak TLS; leave out --tls-ca"
    if closed and connection.tls_ca is None:
        return f"{where}: the connection was closed (if the server uses TLS, pass --tls-ca)"
    if closed and connection.tls_cert is None:
        return f"{where}: the TLS handshake failed (a server requiring client certificates needs --tls-cert, --tls-key)"
    return f"{where}: {details}"


if __name__ == "__main__":
    main()
