"""Entry point of ``hodei-jobs-cli``."""

from __future__ import annotations

import argparse
import os
import sys

# gRPC's core logs connection failures itself; the CLI explains them in one line instead.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc

from hodei.cli import access, admin, jobs, sagas
from hodei.cli.client import DEFAULT_SERVER, SERVER_VARIABLE, Client, Connection
from hodei.cli.jobs import EXIT_INTERRUPTED, StoppedWaiting
from hodei.cli.terminal import Terminal
from hodei.errors import HodeiError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="hodei-jobs-cli",
        description="Submit and inspect Hodei jobs. Settings: flag, then environment, then "
        "~/.config/hodei/config.toml (server, token, tls_ca, tls_cert, tls_key, tls_server_name).",
    )
    root.add_argument(
        "--server",
        "-s",
        help=f"server address host[:port] (env {SERVER_VARIABLE}; default {DEFAULT_SERVER})",
    )
    root.add_argument("--token", help="API token (env HODEI_TOKEN)")
    root.add_argument(
        "--tls-ca", help="CA bundle that signed the server's certificate: turns on TLS (env HODEI_TLS_CA)"
    )
    root.add_argument("--tls-cert", help="client certificate, for mutual TLS (env HODEI_CLIENT_CERT)")
    root.add_argument("--tls-key", help="private key of --tls-cert (env HODEI_CLIENT_KEY)")
    root.add_argument("--output", "-o", choices=["text", "json"], default="text", help="output format")
    commands = root.add_subparsers(dest="command", required=True)
    sagas.add_commands(commands, jobs.add_commands(commands))
    admin.add_commands(commands)
    access.add_commands(commands)
    return root


# Options whose values often start with "-" (the seed writes --args "-c '…'"): argparse
# would take such a value for an option unless it is attached with "=".
_DASHED_VALUES = {"--args", "-a", "--command", "-c"}


# Global options people also type after the command (`job list -o json`).
_GLOBAL = {"--output", "-o", "--server", "-s", "--token", "--tls-ca", "--tls-cert", "--tls-key"}


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
    try:
        client = Client(
            Connection.resolve(
                {
                    "server": args.server,
                    "token": args.token,
                    "tls_ca": args.tls_ca,
                    "tls_cert": args.tls_cert,
                    "tls_key": args.tls_key,
                }
            )
        )
    except HodeiError as exc:
        term.abort(exc.message, code=2)
    try:
        code = args.handler(client, term, args)
    except StoppedWaiting as exc:
        term.abort(exc.message, code=exc.code)
    except HodeiError as exc:
        term.abort(exc.message, code=2)
    except grpc.RpcError as exc:
        term.abort(explain(exc, client.connection))
    except KeyboardInterrupt:
        term.abort("interrupted", code=EXIT_INTERRUPTED)
    finally:
        client.close()
    sys.exit(code)


def explain(exc: grpc.RpcError, connection: Connection) -> str:
    """One line a person can act on."""
    details = exc.details() or ""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return f"{details} ({exc.code().name})"
    where = f"cannot reach the server at {connection.server}"
    if "CERTIFICATE_VERIFY_FAILED" in details or "certificate verify failed" in details.lower():
        return f"{where}: its TLS certificate is not trusted; pass --tls-ca with the CA that signed it"
    closed = "Socket closed" in details or "handshake" in details.lower()
    if "WRONG_VERSION_NUMBER" in details:
        return f"{where}: the server does not speak TLS; leave out --tls-ca"
    if closed and connection.tls_ca is None:
        return f"{where}: the connection was closed (if the server uses TLS, pass --tls-ca)"
    if closed and connection.tls_cert is None:
        return f"{where}: the TLS handshake failed (a server requiring client certificates needs --tls-cert, --tls-key)"
    return f"{where}: {details}"


if __name__ == "__main__":
    main()
