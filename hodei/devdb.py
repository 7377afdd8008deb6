"""PostgreSQL clusters from the installed binaries, for developers and tests.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
``postgres`` OS user. Used by ``just dev-db`` (a cluster under ``.hodei/postgres``) and
by the test suite (a throwaway cluster per run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

_CANDIDATE_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14)]
FAST_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def bin_dir() -> Path:
    for directory in _CANDIDATE_BIN_DIRS:
        if (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) were not found")


# Debian's libfaketime (tools/bootstrap.sh installs it).
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/{name}"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _give_to_postgres(self.root)
        if (self.data / "PG_VERSION").exists():
            return
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir() / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self, extra_options: str = "", clock: str = "") -> None:
        """``clock``: an offset of PostgreSQL's clock from this host's (libfaketime's
        ``FAKETIME``, e.g. ``+30s``), for a database host whose clock is not the server's."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 {extra_options}"
        faked = (
            ["env", f"LD_PRELOAD={FAKETIME}", f"FAKETIME={clock}", "FAKETIME_DONT_FAKE_MONOTONIC=1"] if clock else []
        )
        subprocess.run(
            _as_postgres(
                [
                    *faked,
                    str(bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres([str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def running(self) -> bool:
        result = subprocess.run(
            _as_postgres([str(bin_dir() / "pg_ctl"), "-D", str(self.data), "status"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0


def create_database(server_url: str, name: str, template: str | None = None) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)


def development_target(environ: Mapping[str, str]) -> tuple[int, str]:
    """(port, database) of the development database: HODEI_DEV_DB_PORT, else the port and
    database DATABASE_URL names, else 5432 and hodei_jobs."""
    url = urlsplit(environ.get("DATABASE_URL", ""))
    database = url.path.lstrip("/") or "hodei_jobs"
    given = environ.get("HODEI_DEV_DB_PORT", "")
    try:
        port = int(given) if given else (url.port or 5432)
    except ValueError:
        raise SystemExit(f"HODEI_DEV_DB_PORT must be a port number, got {given!r}") from None
    return port, database


def main() -> None:
    """``python -m hodei.devdb up|down|status|target`` for the developer cluster (``just dev-db``)."""
    port, database = development_target(os.environ)
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "target"])
    parser.add_argument("--dir", type=Path, default=Path(".hodei/postgres"))
    parser.add_argument("--port", type=int, default=port, help="default: from DATABASE_URL or HODEI_DEV_DB_PORT")
    parser.add_argument("--database", default=database, help="default: from DATABASE_URL")
    args = parser.parse_args()
    if args.action == "target":
        print(args.port, args.database)
        return
    cluster = Cluster(args.dir.resolve(), args.port)
    if args.action == "down":
        cluster.stop()
        print(f"stopped the PostgreSQL cluster in {cluster.root}")
        return
    if args.action == "status":
        print("running" if cluster.running() else "stopped")
        sys.exit(0 if cluster.running() else 1)
    if not cluster.running():
        if port_open(args.port):
            sys.exit(
                f"port {args.port} is taken by another server: stop it, or name another port in DATABASE_URL "
                "(or HODEI_DEV_DB_PORT)"
            )
        cluster.init()
        cluster.start()
    create_database(cluster.url, args.database)
    print(f"PostgreSQL is up: {cluster.database_url(args.database)}")


if __name__ == "__main__":
    main()
