"""A server that refuses to be misconfigured: a port in use, a provider set that differs
from the running servers', an address workers cannot dial, and listening beyond
loopback without authentication."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from hodei.devdb import free_port
from hodei.testing import BIN, ServerProcess

pytestmark = pytest.mark.e2e


def refused(server: ServerProcess, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs a server with the fixture's settings plus ``env`` and expects it to exit, as
    misconfigured (78: systemd's unit does not start it again)."""
    result = subprocess.run(
        [str(BIN / "hodei-server")], capture_output=True, text=True, env={**server.env, **env}, timeout=60
    )
    assert result.returncode == 78, result.stdout + result.stderr
    return result


def listening(port: int) -> set[str]:
    """The addresses a TCP port listens on, from /proc/net/tcp{,6} (no traffic sent).
    gRPC may use a dual-stack socket: ``::`` reads as 0.0.0.0, a v4-mapped address as v4."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            packed = ipaddress.ip_address(words)
            if isinstance(packed, ipaddress.IPv6Address):
                packed = packed.ipv4_mapped or (ipaddress.IPv4Address(0) if packed.is_unspecified else packed)
            found.add(str(packed))
    return found


def test_a_bad_setting_exits_78_and_a_database_not_there_1(fresh_database_url: str, tmp_path: Path) -> None:
    """78 (sysexits' EX_CONFIG): the settings must change, and deploy/hodei-server.service does
    not start it again; 1: PostgreSQL not there (yet), which starting it again may mend."""
    server = ServerProcess(fresh_database_url, tmp_path)
    result = refused(server, HODEI_DB_MAX_CONNECTIONS="8")
    assert "hodei-server: HODEI_DB_MAX_CONNECTIONS must be at least 16, got `8`" in result.stderr, result.stderr
    away = subprocess.run(
        [str(BIN / "hodei-server")],
        capture_output=True,
        text=True,
        env={**server.env, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/hodei_jobs"},
        timeout=60,
    )
    assert away.returncode == 1 and "PostgreSQL is unavailable" in away.stderr, away.stderr


def test_a_second_server_on_a_port_in_use_exits_naming_the_port(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path) as first:
        result = refused(first)
        assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use (port {first.port}" in result.stderr
        assert first.cli("job", "list").returncode == 0


@pytest.mark.parametrize("bind", ["192.0.2.1", "no-such-host.invalid"])
def test_an_address_not_of_this_host_to_listen_on_is_refused_naming_the_setting(
    fresh_database_url: str, tmp_path: Path, bind: str
) -> None:
    """It said "is another hodei-server running?" as for a port in use."""
    result = refused(ServerProcess(fresh_database_url, tmp_path), HODEI_GRPC_BIND=bind, HODEI_ALLOW_INSECURE="1")
    assert f"cannot listen on {bind}:" in result.stderr, result.stderr
    assert "(HODEI_GRPC_BIND: an address of this host, or 0.0.0.0 for all of them)" in result.stderr
    assert "another hodei-server" not in result.stderr


def test_a_server_with_another_provider_set_refuses_to_start(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path) as first:
        other = ServerProcess(fresh_database_url, tmp_path, {"HODEI_KUBERNETES_ENABLED": "0"})
        result = refused(other, HODEI_LOCAL_ENABLED="0", HODEI_DOCKER_ENABLED="1")
        assert "enables providers local; this one would enable docker" in result.stderr, result.stderr
        assert "must enable the same providers" in result.stderr
        assert first.cli("job", "list").returncode == 0
        # The same set is welcome: a second server shares the work.
        with ServerProcess(fresh_database_url, tmp_path) as second:
            assert second.cli("job", "run", "--provider", "local", "--command", "true", "--wait").returncode == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HODEI_DOCKER_ENABLED": "1", "HODEI_SERVER_HOST": "host.docker.internal"},
            "HODEI_SERVER_HOST=host.docker.internal: worker containers run on the host network",
        ),
        ({"HODEI_SERVER_HOST": "0.0.0.0"}, "that is an address to listen on, not one workers can dial"),
        ({"HODEI_SERVER_HOST": "no-such-host.invalid"}, "`no-such-host.invalid` does not resolve here"),
        ({"HODEI_SERVER_HOST": "127.0.0.1:99999"}, "HODEI_SERVER_HOST=127.0.0.1:99999: the port must be 1 to 65535"),
        (
            {"HODEI_DOCKER_ENABLED": "1", "HODEI_DOCKER_NETWORK": "bridge"},
            "containers on network bridge have their own loopback",
        ),
    ],
)
def test_an_address_workers_cannot_dial_is_refused_with_a_hint(
    fresh_database_url: str, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = refused(ServerProcess(fresh_database_url, tmp_path), **env)
    assert message in result.stderr, result.stderr


def test_a_log_directory_the_server_cannot_write_in_is_refused(fresh_database_url: str, tmp_path: Path) -> None:
    """It failed every job instead ("step create_worker failed: [Errno 2] ... '/proc/x'")."""
    result = refused(ServerProcess(fresh_database_url, tmp_path), HODEI_LOG_DIR="/proc/hodei-logs")
    assert "HODEI_LOG_DIR=/proc/hodei-logs: cannot write there (No such file or directory)" in result.stderr
    made = tmp_path / "new" / "logs"  # a missing one is made
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOG_DIR": str(made)}):
        assert made.is_dir()


def test_without_authentication_the_server_listens_on_loopback_only(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_GRPC_BIND": ""}) as server:
        assert listening(server.port) == {"127.0.0.1"}
        assert "Authentication is off: listening on 127.0.0.1 only" in server.logs()
    result = refused(ServerProcess(fresh_database_url, tmp_path), HODEI_GRPC_BIND="0.0.0.0")
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert "HODEI_ALLOW_INSECURE=1" in result.stderr
    insecure = {"HODEI_GRPC_BIND": "0.0.0.0", "HODEI_ALLOW_INSECURE": "1"}
    with ServerProcess(fresh_database_url, tmp_path, insecure) as server:
        assert listening(server.port) == {"0.0.0.0"}
        assert "WARNING" in server.logs() and "HODEI_ALLOW_INSECURE=1" in server.logs()


def test_with_authentication_the_server_listens_everywhere_and_health_stays_open(
    fresh_database_url: str, tmp_path: Path
) -> None:
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_GRPC_BIND": "", "HODEI_AUTH": "required"}) as server:
        assert listening(server.port) == {"0.0.0.0"}  # started: its health check answered without a token
        refusal = server.cli("job", "list")
        assert refusal.returncode != 0 and "UNAUTHENTICATED" in refusal.stderr
    assert os.environ.get("HODEI_AUTH") is None
