"""Where the CLI finds its server and token: an address or a setting it cannot use is
refused before anything is sent, naming what to change."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from hodei.cli.client import Connection
from hodei.errors import InvalidInput
from hodei.testing import BIN


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


PROFILES = """
server = "localhost:50051"
token = "hodei_dev"
profile = "staging"

[profiles.prod]
server = "https://jobs.example"
token = "hodei_prod"
tls_ca = "~/prod-ca.pem"

[profiles.staging]
server = "staging.example:7000"
"""


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(PROFILES)
    config.chmod(0o600)
    monkeypatch.setenv("HODEI_CONFIG", str(config))
    monkeypatch.delenv("HODEI_PROFILE", raising=False)
    monkeypatch.delenv("HODEI_TOKEN", raising=False)
    return config


def test_a_profile_names_one_installation_of_several(profiles: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chosen by flag, else $HODEI_PROFILE, else the file's `profile`; its settings alone
    (the file's own are another installation's), flags first."""
    prod = Connection.resolve({}, "prod")
    assert (prod.server, prod.token, prod.tls, prod.tls_ca) == (
        "jobs.example:50051",
        "hodei_prod",
        True,
        Path("~/prod-ca.pem").expanduser(),
    )
    staging = Connection.resolve({})  # the file's default profile
    assert (staging.server, staging.token, staging.tls_ca) == ("staging.example:7000", None, None)
    monkeypatch.setenv("HODEI_PROFILE", "prod")
    assert Connection.resolve({}).server == "jobs.example:50051"
    assert Connection.resolve({"server": "other:1"}, "prod").server == "other:1"


def test_a_chosen_profiles_token_is_not_replaced_by_the_environments(
    profiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token exported for one installation is not sent to another that has its own; one
    without its own takes it (tokens kept out of files)."""
    monkeypatch.setenv("HODEI_TOKEN", "hodei_exported")
    assert Connection.resolve({}, "prod").token == "hodei_prod"
    assert Connection.resolve({}, "staging").token == "hodei_exported"
    assert Connection.resolve({"token": "hodei_flag"}, "prod").token == "hodei_flag"


def test_a_profile_that_is_not_there_or_not_settings_is_refused_naming_what(
    profiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidInput, match=r"no profile `nope` in .*config.toml \(its profiles: prod, staging;"):
        Connection.resolve({}, "nope")
    for text, said in (
        ("[profiles.prod]\nserver = 5\n", r"\[profiles.prod\] server must be a string, in quotes"),
        ('[profiles.prod]\nsrever = "x"\n', r"unknown setting\(s\) in .*: \[profiles.prod\] srever; known:"),
        ('profiles = "prod"\n', r"profiles are tables, each of settings"),
        ("profile = 1\n", r"profile must be a string, in quotes"),
        ('[profiles."a b"]\nserver = "x"\n', r"a profile's name is letters, digits, .*got a b"),
    ):
        profiles.write_text(text)
        with pytest.raises(InvalidInput, match=said):
            Connection.resolve({}, "prod")
    profiles.write_text('[profiles.prod]\ntoken = "hodei_prod"\n')
    profiles.chmod(0o644)
    with pytest.raises(InvalidInput, match="holds a token but others may read it"):
        Connection.resolve({}, "prod")


def config_cli(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`hodei-jobs-cli ARGS` as a person runs it (the environment the fixtures set)."""
    command = [str(BIN / "hodei-jobs-cli"), *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_config_changes_the_table_the_next_command_reads_and_keeps_the_rest(profiles: Path) -> None:
    profiles.write_text(
        "# installations, by hand\n" + PROFILES.replace("[profiles.staging]", "[profiles.staging] # ci")
    )
    # The file's default profile (staging) is what `set` changes, as it is what is read.
    assert config_cli("config", "set", "server", "staging2.example:7001").returncode == 0
    assert Connection.resolve({}).server == "staging2.example:7001"
    changed = profiles.read_text()
    assert changed.startswith("# installations, by hand\n") and "[profiles.staging] # ci" in changed
    assert 'server = "localhost:50051"' in changed  # the file's own, untouched
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    # A profile named by --profile is made; a token read from standard input, never shown.
    made = config_cli("--profile", "eu", "config", "set", "server", "eu.example")
    assert made.returncode == 0 and "server = eu.example in profile eu of " in made.stderr
    given = config_cli("--profile", "eu", "config", "set", "token", "-", stdin="  hodei_eu-1\n")
    assert given.returncode == 0 and "hodei_eu-1" not in given.stdout + given.stderr
    assert config_cli("config", "use", "eu").returncode == 0
    eu = Connection.resolve({})
    assert (eu.server, eu.token, eu.profile) == ("eu.example:50051", "hodei_eu-1", "eu")
    viewed = config_cli("config", "view")
    assert viewed.returncode == 0 and "hodei_eu-1" not in viewed.stdout
    assert f"Profile: eu (from the default of {profiles})" in viewed.stdout
    assert f"server: eu.example (from profile eu of {profiles})" in viewed.stdout
    assert f"token: (set) (from profile eu of {profiles})" in viewed.stdout
    shown = json.loads(config_cli("-o", "json", "--server", "other:1", "config", "view").stdout)
    assert shown["settings"]["server"] == {"value": "other:1", "from": "--server"}
    assert shown["settings"]["token"] == {"value": None, "from": f"profile eu of {profiles}"}
    listed = json.loads(config_cli("-o", "json", "config", "profiles").stdout)
    assert [(p["name"], p["token"], p["default"]) for p in listed] == [
        ("eu", True, True),
        ("prod", True, False),
        ("staging", False, False),
    ]
    assert config_cli("--profile", "eu", "config", "unset", "token").returncode == 0
    assert Connection.resolve({}).token is None
    ca = profiles.parent / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert config_cli("config", "set", "tls_ca", "ca.pem", cwd=profiles.parent).returncode == 0
    assert Connection.resolve({}).tls_ca == ca  # kept whole: it holds from any directory


def test_config_deletes_a_profile_and_the_default_that_named_it(profiles: Path) -> None:
    deleted = config_cli("config", "delete", "prod")
    assert deleted.returncode == 0 and f"profile prod deleted from {profiles}" in deleted.stderr
    assert "[profiles.prod]" not in profiles.read_text() and "[profiles.staging]" in profiles.read_text()
    assert Connection.resolve({}).server == "staging.example:7000"  # the default still read
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    default = config_cli("config", "delete", "staging")
    assert default.returncode == 0 and "it was the default: now none is" in default.stderr
    assert "profile =" not in profiles.read_text()
    assert Connection.resolve({}).server == "localhost:50051"  # the file's own settings now
    assert json.loads(config_cli("-o", "json", "config", "profiles").stdout) == []


def test_a_profile_deleted_from_the_top_of_the_file_leaves_no_blank_lines_there(profiles: Path) -> None:
    profiles.write_text('profile = "a"\n\n[profiles.a]\nserver = "a:1"\n\n[profiles.b]\nserver = "b:1"\n')
    assert config_cli("config", "delete", "a").returncode == 0
    assert profiles.read_text() == '[profiles.b]\nserver = "b:1"\n'


def test_config_refuses_what_the_settings_reader_would_and_leaves_the_file_as_it_was(profiles: Path) -> None:
    before = profiles.read_bytes()
    for args, said in (
        (("config", "set", "server", "jobs:99999"), "the port must be 1 to 65535, got `99999`"),
        (("config", "set", "tls_cert", "/nonexistent/cert.pem"), "tls_cert /nonexistent/cert.pem: no such file"),
        (("config", "set", "token", "hodei_a b"), "holds a character no token has"),
        (("config", "set", "server", " "), "server must not be empty: `config unset server` removes it"),
        (("--profile", "a b", "config", "set", "server", "x"), "a profile's name is 1-63 letters"),
        (("config", "use", "nope"), "no profile `nope` in "),
        (("config", "delete", "nope"), "no profile `nope` in "),
        (("config", "delete", "a b"), "a profile's name is 1-63 letters"),
        (("config", "set", "colour", "red"), "invalid choice: 'colour'"),
    ):
        refused = config_cli(*args)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
        assert "hodei_a b" not in refused.stderr
        assert profiles.read_bytes() == before
    profiles.write_text(PROFILES + "colour = 'red'\n")  # a setting this version does not know
    refused = config_cli("config", "set", "server", "x")
    assert refused.returncode == 2 and "unknown setting(s) in " in refused.stderr
