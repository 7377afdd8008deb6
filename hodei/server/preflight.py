"""Start-up checks: a server that would be unsafe or could not work refuses to start,
with a message that says what to change.

- Without authentication it listens on loopback only (unless HODEI_ALLOW_INSECURE=1).
- Servers sharing a database enable the same providers: a saga step may run on any of
  them, so one that cannot run it would fail jobs at random.
- The address workers are told to dial must be one they can reach.
- The log directory (jobs' output, local workers' own) must be one it can write in, and
  no one else can read: a local job, or any user of the host, would read every job's output.
- The connections it may open should be there to open: it says so (a warning: others'
  use goes up and down) when PostgreSQL's max_connections leaves fewer.
- It may hold as many files open as the host lets it (``open_files``).
- Its host's clock and PostgreSQL's should agree: it says so when they do not, at start
  and whenever the difference moves, and goes by PostgreSQL's for deadlines (``Clocks``).
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import socket
import stat
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlparse

from psycopg_pool import ConnectionPool

from hodei.clock import DatabaseClock
from hodei.config import Config
from hodei.errors import HodeiError
from hodei.store.db import connect, fetch_value, translate_errors
from hodei.store.instances import ServerInstances

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT = 3.0
TOKEN_HINT = "create a token (`hodei-server token create --name admin --role admin`) or set HODEI_AUTH=required"


class Misconfigured(HodeiError):
    """The server's configuration is unsafe or cannot work."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_host(config: Config, authentication: bool) -> str:
    """Where the API listens: anywhere with authentication, loopback without."""
    if authentication:
        return config.bind_host or "0.0.0.0"
    host = config.bind_host or "127.0.0.1"
    if _is_loopback(host):
        log.info("Authentication is off: listening on %s only (%s to listen beyond it)", host, TOKEN_HINT)
        return host
    if config.allow_insecure:
        log.warning(
            "Authentication is off and HODEI_ALLOW_INSECURE=1: anyone who reaches %s:%d can run commands on "
            "this platform's machines",
            host,
            config.port,
        )
        return host
    raise Misconfigured(
        f"refusing to listen on {host} without authentication: anyone who reaches it could run any command. "
        f"{TOKEN_HINT.capitalize()}, listen on 127.0.0.1, or set HODEI_ALLOW_INSECURE=1 to accept the risk"
    )


def check_peers(instances: ServerInstances, providers: Sequence[str]) -> None:
    mine = sorted(providers)
    for peer in instances.peers():
        if sorted(peer.providers) != mine:
            theirs = ", ".join(sorted(peer.providers)) or "none"
            raise Misconfigured(
                f"server {peer.server_id} (API {peer.api_address}) on this database enables providers {theirs}; "
                f"this one would enable {', '.join(mine) or 'none'}. Servers sharing a database must enable the "
                "same providers (any of them may run a job's next saga step): change HODEI_*_ENABLED to match"
            )


# The connections a server opens beside its pool: the relay's claims (2), the listener
# (hodei.signals) and its own liveness row's (hodei.store.instances).
OWN_CONNECTIONS = 4


def check_connections(config: Config) -> None:
    """PostgreSQL's connections are shared by every server and tool of the installation (and
    whatever else uses that cluster): a server that cannot open one when its burst needs it
    waits, and a job may fail. Before the pool opens: of the connections seen, one is this
    check's own."""
    wanted = config.database_connections + OWN_CONNECTIONS
    with translate_errors(), connect(config.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
            " + coalesce(current_setting('reserved_connections', true)::int, 0),"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') - 1"
        ).fetchone()
    assert row is not None
    most, reserved, open_now = row
    left = most - reserved - open_now
    if left < wanted:
        log.warning(
            "PostgreSQL takes %d connections (max_connections %d, %d of them reserved) and %d are open: %d are "
            "left, and this server may open %d (HODEI_DB_MAX_CONNECTIONS=%d, and %d of its own). When it cannot "
            "open one, a burst of jobs waits for connections and some may fail: raise max_connections, or lower "
            "HODEI_DB_MAX_CONNECTIONS (each server of the installation may open so many)",
            most - reserved,
            most,
            reserved,
            open_now,
            max(left, 0),
            wanted,
            config.database_connections,
            OWN_CONNECTIONS,
        )


def open_files() -> None:
    """Each connected worker holds a socket, each running job's log a file: a process keeps
    the soft limit it was started with (1024 from a usual shell), which a fleet of a thousand
    workers passes, accepts then failing with EMFILE. The hard limit is what the host allows
    (Go's runtime raises its soft limit to it at start the same way, and gives its children
    the old one back): called once the local provider has read the limit its jobs keep."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("Open files: at most %d (the hard limit; the soft one was %d)", hard, soft)


# How far apart this host's clock and PostgreSQL's may be before the server says so.
CLOCK_SLACK = 1.0


class Clocks:
    """Deadlines go by PostgreSQL's clock (``hodei.clock``), which this measures; what
    stays each server's is the times events carry, which jobs show: a host whose clock is
    off shows its jobs' times off by as much, and is told so."""

    def __init__(self, pool: ConnectionPool, clock: DatabaseClock) -> None:
        self.pool = pool
        self.clock = clock
        # The offset last warned about; None while the clocks agree.
        self.said: float | None = None

    def offset(self) -> tuple[float, float]:
        """Seconds PostgreSQL's clock is ahead of this host's (negative: behind), to within
        half a round trip, and the round trip's seconds."""
        before = time.time()
        database = fetch_value(self.pool, "database_clock")
        after = time.time()
        return float(database.timestamp()) - (before + after) / 2, after - before

    def check(self) -> None:
        """Sets the clock deadlines go by; warns once the clocks are CLOCK_SLACK apart,
        again when the difference moves as much, and says when they agree again."""
        offset, round_trip = self.offset()
        if self.clock.follow(offset, round_trip):
            log.info("deadlines go by PostgreSQL's clock: this host's %+.3fs", offset)
        if abs(offset) < CLOCK_SLACK:
            if self.said is not None:
                log.info("this host's clock and PostgreSQL's agree again (within %gs)", CLOCK_SLACK)
            self.said = None
            return
        if self.said is not None and abs(offset - self.said) < CLOCK_SLACK:
            return
        self.said = offset
        log.warning(
            "this host's clock is %.1fs %s PostgreSQL's: deadlines (saga steps', retries', cancels' graces, cron "
            "schedules) go by PostgreSQL's, but the times shown for jobs are this host's; keep the clocks of the "
            "servers' and the database's hosts in sync (NTP: chrony or systemd-timesyncd)",
            abs(offset),
            "behind" if offset > 0 else "ahead of",
        )


def _resolve(host: str) -> list[str]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(socket.getaddrinfo, host.strip("[]"), None)
        try:
            return [str(info[4][0]) for info in future.result(timeout=RESOLVE_TIMEOUT)]
        except (OSError, FutureTimeout):
            return []


def check_log_dir(config: Config) -> None:
    """Made if missing, and written in once: otherwise every job would fail at its first
    line of output, or on the local provider before its worker starts. Kept to this
    server's user (``_keep_private``)."""
    try:
        config.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _keep_private(config)
        with tempfile.TemporaryFile(dir=config.log_dir):
            pass
    except OSError as exc:
        raise Misconfigured(f"HODEI_LOG_DIR={config.log_dir}: cannot write there ({exc.strerror})") from None


def _keep_private(config: Config) -> None:
    """Takes the group's and others' rights off the log directory: every job's output
    and artifacts are in it, and local jobs run on this host (as HODEI_LOCAL_RUN_AS): with
    the default /tmp/hodei-logs made 0755, a local job read any job's log, of any
    submitter and any provider."""
    mode = stat.S_IMODE(config.log_dir.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        config.log_dir.chmod(mode & 0o700)
    except PermissionError:
        raise Misconfigured(
            f"HODEI_LOG_DIR={config.log_dir}: other users of this host may read it (mode {mode:04o}), and this "
            "server's user cannot change that: every job's output is there; make it the server's own, mode 0700"
        ) from None
    log.warning(
        "HODEI_LOG_DIR=%s was open to other users of this host (mode %04o): now %04o, the server's own",
        config.log_dir,
        mode,
        mode & 0o700,
    )


def check_worker_address(config: Config, providers: Sequence[str], listen: str, kubernetes_api: str | None) -> None:
    """Refuses an address the enabled providers' workers could not dial
    (``kubernetes_api``: the URL of the cluster's API server, when that provider runs)."""
    if not providers:
        return
    address = config.worker_server_address
    host, port = address.rsplit(":", 1)
    where = f"HODEI_SERVER_HOST={config.advertise_host}"
    if not 1 <= int(port) <= 65535:
        raise Misconfigured(f"{where}: the port must be 1 to 65535, got {port}")
    if host.strip("[]") in ("0.0.0.0", "::"):
        raise Misconfigured(f"{where}: that is an address to listen on, not one workers can dial")
    docker_network = config.docker.network if "docker" in providers else None
    if docker_network == "host" and host == "host.docker.internal":
        raise Misconfigured(
            f"{where}: worker containers run on the host network (HODEI_DOCKER_NETWORK=host), where that name does "
            "not exist; use 127.0.0.1 or this host's address"
        )
    if docker_network not in (None, "host") and _is_loopback(host):
        raise Misconfigured(
            f"{where}: containers on network {docker_network} have their own loopback; use host.docker.internal "
            "(added to every worker container) or an address they can route to, or HODEI_DOCKER_NETWORK=host"
        )
    if kubernetes_api and _is_loopback(host):
        api_host = urlparse(kubernetes_api).hostname or ""
        if api_host and not _is_loopback(api_host):
            raise Misconfigured(
                f"{where}: pods of the cluster at {kubernetes_api} cannot dial this host's loopback; "
                "set it to the server's Service name (e.g. hodei-server.hodei-jobs) or an address pods can reach"
            )
    resolvable = host == "host.docker.internal" and docker_network not in (None, "host")
    if not resolvable and not _resolve(host):
        raise Misconfigured(f"{where}: `{host}` does not resolve here; workers could not dial it")
    if _is_loopback(listen) and not _is_loopback(host):
        raise Misconfigured(
            f"{where}: workers would dial {host}, but the server listens on {listen} only (authentication is off); "
            f"{TOKEN_HINT}, or use a loopback address"
        )
