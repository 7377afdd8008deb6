"""TLS and mutual TLS end to end: the CLI, a local worker and a Docker worker reach a
server whose certificate a test CA signed; clients without the CA, or without a client
certificate under mTLS, are refused with a clear message."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from hodei.testing import Cli, Pki, ServerProcess, make_pki, query, wait_settled

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


def replace_files(*copies: tuple[Path, Path]) -> None:
    """Each (source, target): the target's contents replaced in place, one file after the
    other, as cert-manager and certbot renew them."""
    for source, target in copies:
        shutil.copyfile(source, target)


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
    untrusting = Cli(tls_server.address, ("--tls-ca", "/etc/ssl/certs/ca-certificates.crt"))
    result = untrusting.cli("job", "list", timeout=30)
    assert result.returncode != 0
    assert "its TLS certificate is not trusted; pass --tls-ca" in result.stderr, result.stderr
    plaintext = Cli(tls_server.address).cli("job", "list", timeout=30)
    assert plaintext.returncode != 0
    assert f"cannot reach the server at {tls_server.address}" in plaintext.stderr


def test_an_https_address_turns_tls_on_and_sends_no_token_in_clear(tls_server: ServerProcess, pki: Pki) -> None:
    """`--server https://…` without --tls-ca opened a plaintext channel: the token went out
    in the clear to whatever listened there (an HTTP/2 preface, then the call's headers)."""
    address = f"https://{tls_server.address}"
    untrusted = Cli(address).cli("job", "list", timeout=30)  # grpcio's own CAs: not the test's
    assert untrusted.returncode != 0 and "its TLS certificate is not trusted" in untrusted.stderr, untrusted.stderr
    assert Cli(address, ("--tls-ca", str(pki.ca))).cli("job", "list", timeout=30).returncode == 0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(30)
        client = Cli(f"https://127.0.0.1:{listener.getsockname()[1]}", ("--token", "hodei_not-for-the-wire"))
        asking = client.spawn("job", "list")
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(30)
                first = connection.recv(5)
        finally:
            asking.kill()
            asking.communicate()
    assert first[:2] == b"\x16\x03", first  # a TLS handshake record, not b"PRI * HTTP/2.0"


def test_mutual_tls_refuses_a_client_without_a_certificate(fresh_database_url: str, pki: Pki, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path, tls_env(pki, mutual=True), tls=pki) as server:
        done = server.cli("job", "run", "--provider", "local", "--command", "echo mutual", "--timeout", "30", "--wait")
        assert done.returncode == 0, done.stderr
        wait_settled(fresh_database_url, done.stdout.strip())
        anonymous = Cli(server.address, ("--tls-ca", str(pki.ca))).cli("job", "list", timeout=30)
        assert anonymous.returncode != 0
        assert "needs --tls-cert, --tls-key" in anonymous.stderr, anonymous.stderr
        assert query(fresh_database_url, "SELECT state FROM jobs") == [("SUCCEEDED",)]


def test_certificates_rotated_on_disk_are_served_without_a_restart(fresh_database_url: str, tmp_path: Path) -> None:
    """The files replaced in place (as cert-manager and certbot do): the next connections,
    the console within seconds, and the next workers get the new ones; a key written
    before its certificate is not taken until the pair matches (the old pair serves on).
    A client that does not trust the certificate, or finds it expired, is told which."""
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    cert, key, ca = live / "tls.crt", live / "tls.key", live / "ca.crt"
    replace_files((old.server_cert, cert), (old.server_key, key), (old.ca, ca))
    env = {"HODEI_TLS_CERT": str(cert), "HODEI_TLS_KEY": str(key), "HODEI_TLS_CA": str(ca)}
    with ServerProcess(fresh_database_url, tmp_path / "logs", env, tls=old, http=True) as server:
        trusting_old = Cli(server.address, ("--tls-ca", str(old.ca)))
        trusting_new = Cli(server.address, ("--tls-ca", str(new.ca)))
        assert trusting_old.cli("job", "list", timeout=30).returncode == 0
        assert "not trusted" in trusting_new.cli("job", "list", timeout=30).stderr
        assert requests.get(f"{server.http_url}/healthz", verify=str(old.ca), timeout=10).ok

        replace_files((new.server_key, key))  # half-way: the new key beside the old certificate
        for _ in range(3):
            assert trusting_old.cli("job", "list", timeout=30).returncode == 0
        assert server.logs().count("cannot be used yet") >= 1
        assert server.logs().count("serving the previous ones") == 1  # said once, not at every connection
        replace_files((new.server_cert, cert), (new.ca, ca))  # the CA: what workers are told to trust
        assert trusting_new.cli("job", "list", timeout=30).returncode == 0
        assert "not trusted" in trusting_old.cli("job", "list", timeout=30).stderr
        ran = trusting_new.cli("job", "run", "-p", "local", "-c", "echo after rotation", "--timeout", "30", "--follow")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == ["after rotation"]
        deadline = time.monotonic() + 30
        while True:
            try:
                assert requests.get(f"{server.http_url}/healthz", verify=str(new.ca), timeout=10).ok
                break
            except requests.exceptions.SSLError:
                assert time.monotonic() < deadline, "the console still serves the old certificate"
                time.sleep(0.5)
        assert "TLS certificate reloaded" in server.logs()

        lapsed = make_pki(tmp_path / "lapsed", days=0)  # valid until now: expired by its first use
        replace_files((lapsed.server_key, key), (lapsed.server_cert, cert))
        time.sleep(1)
        refused = Cli(server.address, ("--tls-ca", str(lapsed.ca))).cli("job", "list", timeout=30)
        assert "its TLS certificate has expired (or this machine's clock is wrong)" in refused.stderr, refused.stderr


def test_a_client_ca_rotated_on_disk_is_the_only_one_trusted(fresh_database_url: str, tmp_path: Path) -> None:
    """Mutual TLS with the client CA replaced in place (a leaked CA rotated out): from the
    next connection on, the API and, within seconds, the console accept the new CA's
    clients and refuse the old one's, and new workers get certificates of the new CA."""
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    client_ca, worker_cert, worker_key = live / "client-ca.crt", live / "worker.crt", live / "worker.key"
    replace_files((old.ca, client_ca), (old.client_cert, worker_cert), (old.client_key, worker_key))
    env = tls_env(old, mutual=False) | {
        "HODEI_TLS_CLIENT_CA": str(client_ca),
        "HODEI_TLS_WORKER_CERT": str(worker_cert),
        "HODEI_TLS_WORKER_KEY": str(worker_key),
    }

    def client(pki: Pki) -> Cli:
        certificate = ("--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
        return Cli(address, ("--tls-ca", str(old.ca), *certificate))

    def console_accepts(pki: Pki) -> bool:
        try:
            certificate = (str(pki.client_cert), str(pki.client_key))
            return requests.get(f"{server.http_url}/healthz", verify=str(old.ca), cert=certificate, timeout=10).ok
        except requests.exceptions.ConnectionError:  # the handshake refused (SSLError is one)
            return False

    with ServerProcess(fresh_database_url, tmp_path / "logs", env, tls=old, http=True) as server:
        address = server.address
        assert client(old).cli("job", "list", timeout=30).returncode == 0
        assert client(new).cli("job", "list", timeout=30).returncode != 0
        assert console_accepts(old) and not console_accepts(new)

        replace_files((new.ca, client_ca), (new.client_cert, worker_cert), (new.client_key, worker_key))
        assert client(new).cli("job", "list", timeout=30).returncode == 0
        assert client(old).cli("job", "list", timeout=30).returncode != 0
        ran = client(new).cli("job", "run", "-p", "local", "-c", "echo new worker", "--timeout", "30", "--follow")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == ["new worker"]
        deadline = time.monotonic() + 30
        while not console_accepts(new):
            assert time.monotonic() < deadline, "the console does not take the new client CA"
            time.sleep(0.5)
        assert not console_accepts(old)
        assert "web console's TLS certificate reloaded" in server.logs()


def test_a_key_that_is_not_the_certificates_stops_the_server_at_start(
    fresh_database_url: str, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other")
    cases = [
        ({"HODEI_TLS_KEY": str(other.server_key)}, "not a certificate and its key (KEY_VALUES_MISMATCH)"),
        (
            {"HODEI_TLS_CLIENT_CA": "/etc/hostname", "HODEI_TLS_WORKER_CERT": str(pki.client_cert)}
            | {"HODEI_TLS_WORKER_KEY": str(pki.client_key)},
            "HODEI_TLS_CLIENT_CA=/etc/hostname: not a certificate, its key and a CA bundle",
        ),
    ]
    for change, said in cases:
        env = tls_env(pki, mutual=False) | change
        with pytest.raises(RuntimeError, match="exited with 78") as refused:
            ServerProcess(fresh_database_url, tmp_path / "logs", env, tls=pki).start()
        assert f"hodei-server: HODEI_TLS_CERT={pki.server_cert}" in str(refused.value)
        assert said in str(refused.value)
        assert "Traceback" not in str(refused.value)
