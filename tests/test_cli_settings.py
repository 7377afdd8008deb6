"""Where the CLI finds its server and token: an address or a setting it cannot use is
refused before anything is sent, naming what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from hodei.cli.client import Connection
from hodei.errors import InvalidInput


@pytest.fixture(autouse=True)
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODEI_CONFIG", "/nonexistent/config.toml")
    monkeypatch.delenv("HODEI_SERVER", raising=False)


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("localhost", "localhost:50051"),
        ("localhost:7000", "localhost:7000"),
        ("http://jobs.example:8000/", "jobs.example:8000"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:7000", "[::1]:7000"),
        ("::1", "[::1]:50051"),
    ],
)
def test_a_server_is_a_host_with_or_without_its_port(given: str, dialled: str) -> None:
    assert Connection.resolve({"server": given}).server == dialled


@pytest.mark.parametrize("port", ["99999", "0", "abc", ""])
def test_a_port_no_server_can_have_is_refused(port: str) -> None:
    """gRPC took 99999 as 34463 (modulo 65536) and tried that port."""
    with pytest.raises(InvalidInput, match=f"server address h:{port}: the port must be 1 to 65535, got `{port}`"):
        Connection.resolve({"server": f"h:{port}"})


def test_a_setting_of_the_config_file_that_is_not_a_string_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`server = 5` was taken as the host `5`."""
    config = tmp_path / "config.toml"
    config.write_text("server = 5\ntls_ca = true\n")
    monkeypatch.setenv("HODEI_CONFIG", str(config))
    with pytest.raises(InvalidInput, match=f"{config}: server, tls_ca must be a string, in quotes"):
        Connection.resolve({})
    config.write_text('server = "jobs.example"\n')
    assert Connection.resolve({}).server == "jobs.example:50051"


@pytest.mark.parametrize(
    ("given", "tls"), [("https://h", True), ("grpcs://h:7000", True), ("http://h", False), ("h", False)]
)
def test_an_https_address_asks_for_tls(given: str, tls: bool) -> None:
    assert Connection.resolve({"server": given}).tls is tls


def test_a_token_is_taken_without_the_spaces_around_it_and_one_no_token_could_be_is_refused() -> None:
    """A token read whole from a file keeps its line break; gRPC refused it as "Invalid
    metadata (INTERNAL)", and one with a space or a letter beyond ASCII too."""
    assert Connection.resolve({"token": "  hodei_abc-_9\n"}).token == "hodei_abc-_9"
    assert Connection.resolve({"token": " \n"}).token is None
    for wrong in ("hodei_a b", "hodei_é", "hodei_a\nb"):
        with pytest.raises(InvalidInput, match="holds a character no token has") as refused:
            Connection.resolve({"token": wrong})
        assert wrong.strip() not in refused.value.message  # never the value
