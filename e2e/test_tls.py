"""TLS and mutual TLS end to end: the CLI, a local worker and a Docker worker reach a
server whose certificate a test CA signed; clients without the CA, or without a client
certificate under mTLS, are refused with a clear message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei.testing import Pki, ServerProcess, make_pki, query, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(pki: Pki, mutual: bool) -> dict[str, str]:
    env = {"HODEI_TLS_CERT": str(pki.server_cert), "HODEI_TLS_KEY": str(pki.server_key), "HODEI_TLS_CA": str(pki.ca)}
    if mutual:
        env |= {
            "HODEI_TLS_CLIENT_CA": str(pki.ca),
            "HODEI_TLS_WORKER_CERT": str(pki.client_cert),
            "HODEI_TLS_WORKER_KEY": str(pki.client_key),
        }
    return env


@pytest.fixture(scope="module")
def tls_server(
    pg_server: str, template_database: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    from conftest import new_database

    url = new_database(pg_server, template_database)
    with ServerProcess(url, tmp_path_factory.mktemp("tls"), tls_env(pki, mutual=False), tls=pki) as server:
        yield server


def test_the_cli_and_a_local_worker_work_over_tls(tls_server: ServerProcess) -> None:
    result = tls_server.cli(
        "job", "run", "--provider", "local", "--command", "echo over tls", "--timeout", "30", "--follow"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["over tls"]


@pytest.mark.docker
def test_a_docker_worker_works_over_tls(
    pg_server: str, template_database: str, pki: Pki, worker_image: str, tmp_path: Path
) -> None:
    from conftest import new_database

    url = new_database(pg_server, template_database)
    env = {
        **tls_env(pki, mutual=False),
        "HODEI_DOCKER_ENABLED": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_WORKER_IMAGE": worker_image,
    }
    with ServerProcess(url, tmp_path, env, tls=pki) as server:
        result = server.cli(
            "job", "run", "--provider", "docker", "--command", "echo docker tls", "--timeout", "60", "--wait"
        )
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        wait_settled(url, job_id)
        assert server.cli("job", "logs", "--id", job_id, check=True).stdout.splitlines() == ["docker tls"]


def test_a_client_without_the_ca_gets_a_certificate_error(tls_server: ServerProcess) -> None:
    from hodei.testing import Cli

    untrusting = Cli(tls_server.address, ("--tls-ca", "/etc/ssl/certs/ca-certificates.crt"))
    result = untrusting.cli("job", "list", timeout=30)
    assert result.returncode != 0
    assert "its TLS certificate is not trusted; pass --tls-ca" in result.stderr, result.stderr
    plaintext = Cli(tls_server.address).cli("job", "list", timeout=30)
    assert plaintext.returncode != 0
    assert f"cannot reach the server at {tls_server.address}" in plaintext.stderr


def test_mutual_tls_refuses_a_client_without_a_certificate(fresh_database_url: str, pki: Pki, tmp_path: Path) -> None:
    from hodei.testing import Cli

    with ServerProcess(fresh_database_url, tmp_path, tls_env(pki, mutual=True), tls=pki) as server:
        done = server.cli("job", "run", "--provider", "local", "--command", "echo mutual", "--timeout", "30", "--wait")
        assert done.returncode == 0, done.stderr
        wait_settled(fresh_database_url, done.stdout.strip())
        anonymous = Cli(server.address, ("--tls-ca", str(pki.ca))).cli("job", "list", timeout=30)
        assert anonymous.returncode != 0
        assert "needs --tls-cert, --tls-key" in anonymous.stderr, anonymous.stderr
        assert query(fresh_database_url, "SELECT state FROM jobs") == [("SUCCEEDED",)]
