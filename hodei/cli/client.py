"""The gRPC connection the CLI commands share, and where its settings come from.

Each setting is taken from, in order: its flag, its environment variable, the config
file (``$HODEI_CONFIG``, else ``~/.config/hodei/config.toml``), the default. The file
may hold ``server``, ``token``, ``tls_ca``, ``tls_cert``, ``tls_key`` and
``tls_server_name``; holding a token, it must be readable by its owner only.

It may also name installations (kubectl's contexts, the AWS CLI's profiles): a
``[profiles.NAME]`` table of the same settings, chosen by ``--profile NAME``,
``$HODEI_PROFILE`` or the file's ``profile = "NAME"``. A chosen profile's settings come
before the environment's (a ``HODEI_TOKEN`` exported for one installation is not sent to
another that has its own), the file's others are not used, and flags still come first.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from hodei._proto import (
    access_pb2_grpc,
    artifacts_pb2_grpc,
    audit_pb2_grpc,
    cron_pb2_grpc,
    jobs_pb2_grpc,
    limits_pb2_grpc,
    logs_pb2_grpc,
    metrics_pb2_grpc,
    outbox_pb2_grpc,
    pools_pb2_grpc,
    providers_pb2_grpc,
    report_pb2_grpc,
    sagas_pb2_grpc,
    scheduler_pb2_grpc,
    webhooks_pb2_grpc,
)
from hodei.errors import InvalidInput

DEFAULT_SERVER = "localhost:50051"
SERVER_VARIABLE = "HODEI_SERVER"
PROFILE_VARIABLE = "HODEI_PROFILE"
KEYS = {"server", "token", "tls_ca", "tls_cert", "tls_key", "tls_server_name"}
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

# What the server refuses (exit 2, as for bad flags), as opposed to failing to answer (exit 1).
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def config_path() -> Path:
    given = os.environ.get("HODEI_CONFIG")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hodei" / "config.toml"


@dataclass(frozen=True)
class Config:
    """The config file's settings: its own, and each profile's."""

    settings: dict[str, str]
    profiles: dict[str, dict[str, str]]
    # The profile used when none is chosen by flag or environment (`profile = "NAME"`).
    profile: str | None = None

    def chosen(self, name: str, path: Path) -> dict[str, str]:
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise InvalidInput(f"no profile `{name}` in {path} (its profiles: {known}; a [profiles.NAME] table each)")
        return self.profiles[name]


def read_config(path: Path) -> Config:
    if not path.exists():
        return Config({}, {})
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"cannot read the config file {path}: {exc}") from None
    profiles = data.pop("profiles", {})
    default = data.pop("profile", None)
    if not isinstance(profiles, dict) or not all(isinstance(table, dict) for table in profiles.values()):
        raise InvalidInput(f'{path}: profiles are tables, each of settings: [profiles.NAME] then `server = "…"`')
    settings = _settings(data, path, "")
    named = {name: _settings(table, path, f"[profiles.{name}] ") for name, table in profiles.items()}
    bad = sorted(name for name in named if not PROFILE_NAME.fullmatch(name))
    if bad:
        raise InvalidInput(f"{path}: a profile's name is letters, digits, `.`, `_` and `-`, got {', '.join(bad)}")
    if default is not None and not isinstance(default, str):
        raise InvalidInput(f'{path}: profile must be a string, in quotes (`profile = "prod"`)')
    mode = stat.S_IMODE(path.stat().st_mode)
    if any("token" in table for table in (settings, *named.values())) and mode & 0o077:
        raise InvalidInput(f"{path} holds a token but others may read it (mode {mode:o}): run `chmod 600 {path}`")
    return Config(settings, named, default)


def _settings(data: dict[str, Any], path: Path, where: str) -> dict[str, str]:
    """One table's settings, checked: known names, and strings."""
    unknown = set(data) - KEYS
    if unknown:
        raise InvalidInput(
            f"unknown setting(s) in {path}: {where}{', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(KEYS))} (and profile, profiles)"
        )
    unquoted = sorted(key for key, value in data.items() if not isinstance(value, str))
    if unquoted:
        quoted = '`server = "host:50051"`'
        raise InvalidInput(f"{path}: {where}{', '.join(unquoted)} must be a string, in quotes ({quoted})")
    return dict(data)


def token_of(given: str | None) -> str | None:
    """The token as given, but the spaces and line breaks around it (a paste, a file read
    whole); one holding a character no token has is refused here, naming where tokens
    come from and never the value: gRPC refused it as "Invalid metadata (INTERNAL)"."""
    token = (given or "").strip()
    if any(not " " < character < "\x7f" for character in token):
        raise InvalidInput(
            "the API token (--token, HODEI_TOKEN or the config file's `token`) holds a character no token has "
            "(a space, a line break, a letter beyond ASCII): a token is `hodei_` then letters, digits, `-` and `_`"
        )
    return token or None


# Schemes a server address may begin with, and whether each asks for TLS.
_SCHEMES = {"http://": False, "grpc://": False, "https://": True, "grpcs://": True}


def _scheme_tls(server: str) -> bool:
    """Whether the address asks for TLS by its scheme (``https://``, ``grpcs://``)."""
    return any(server.startswith(prefix) and tls for prefix, tls in _SCHEMES.items())


def address_of(server: str) -> str:
    """Accepts ``host:port``, ``host`` (port 50051) and the seed's ``http://host:port``."""
    for prefix in _SCHEMES:
        if server.startswith(prefix):
            server = server[len(prefix) :]
    server = server.rstrip("/")
    host, sep, port = server.rpartition(":")
    if not sep or (host.startswith("[") and not host.endswith("]")):
        return f"{server}:50051"  # a host alone, or [an IPv6 address] alone
    if ":" in host and not host.startswith("["):
        return f"[{server}]:50051"  # an IPv6 address alone: its colons are its own
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        # gRPC would take 99999 as 34463: another port, maybe another program's.
        raise InvalidInput(f"server address {server}: the port must be 1 to 65535, got `{port}`")
    return server


# Each setting's environment variable, and its flag.
VARIABLES = {
    "server": SERVER_VARIABLE,
    "token": "HODEI_TOKEN",
    "tls_ca": "HODEI_TLS_CA",
    "tls_cert": "HODEI_CLIENT_CERT",
    "tls_key": "HODEI_CLIENT_KEY",
    "tls_server_name": "HODEI_TLS_SERVER_NAME",
}
FLAGS = {key: "--" + key.replace("_", "-") for key in VARIABLES}


@dataclass(frozen=True)
class Setting:
    value: str
    # Where it came from: its flag, its variable ($HODEI_SERVER), the config file's
    # profile or its own settings.
    origin: str


def chosen_profile(profile: str | None, config: Config, path: Path) -> tuple[str | None, str | None]:
    """The profile chosen by flag, else by $HODEI_PROFILE, else the file's default, and
    what chose it; (None, None) when none is."""
    for name, origin in (
        (profile, "--profile"),
        (os.environ.get(PROFILE_VARIABLE), f"${PROFILE_VARIABLE}"),
        (config.profile, f"the default of {path}"),
    ):
        if name:
            return name, origin
    return None, None


@dataclass(frozen=True)
class Chosen:
    """The settings the CLI connects with, each with where it came from; the profile
    chosen, and what chose it."""

    settings: dict[str, Setting]
    profile: str | None
    profile_origin: str | None
    path: Path

    @classmethod
    def of(cls, flags: Mapping[str, str | None], profile: str | None = None) -> Chosen:
        path = config_path()
        config = read_config(path)
        environment = {key: os.environ.get(variable) for key, variable in VARIABLES.items()}
        by_flag = [(FLAGS[key], key, value) for key, value in flags.items()]
        by_variable = [(f"${VARIABLES[key]}", key, value) for key, value in environment.items()]
        name, origin = chosen_profile(profile, config, path)
        if name:
            in_file = [(f"profile {name} of {path}", key, value) for key, value in config.chosen(name, path).items()]
            layers = by_flag + in_file + by_variable
        else:
            layers = by_flag + by_variable + [(str(path), key, value) for key, value in config.settings.items()]
        settings: dict[str, Setting] = {}
        for where, key, value in layers:
            if value and key not in settings:
                settings[key] = Setting(value, where)
        return cls(settings, name, origin, path)


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    # TLS asked for by the address (https://) alone: the server's certificate is checked
    # against the CAs grpcio trusts by default, where no --tls-ca names others.
    tls: bool = False
    # The config file's profile its settings came from (None: none chosen).
    profile: str | None = None

    @classmethod
    def resolve(cls, flags: dict[str, str | None], profile: str | None = None) -> Connection:
        """Flags (None when not given) over environment over config file over defaults; a
        profile chosen (``profile``, else $HODEI_PROFILE, else the file's) over the
        environment, in place of the file's own settings."""
        chosen = Chosen.of(flags, profile)

        def pick(key: str) -> str | None:
            found = chosen.settings.get(key)
            return found.value if found else None

        def path(key: str) -> Path | None:
            value = pick(key)
            return Path(value).expanduser() if value else None

        server = pick("server") or DEFAULT_SERVER
        return cls(
            server=address_of(server),
            tls=_scheme_tls(server),
            token=token_of(pick("token")),
            tls_ca=path("tls_ca"),
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            tls_server_name=pick("tls_server_name"),
            profile=chosen.profile,
        )

    def channel(self) -> grpc.Channel:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        if not self.tls and self.tls_ca is None and self.tls_cert is None:
            return grpc.insecure_channel(self.server, options=options)
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca, "--tls-ca"),
            private_key=_read(self.tls_key, "--tls-key"),
            certificate_chain=_read(self.tls_cert, "--tls-cert"),
        )
        return grpc.secure_channel(self.server, credentials, options=options)


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{flag} {path}: {exc.strerror}") from None


class Client:
    def __init__(self, connection: Connection, timeout: float = 30.0) -> None:
        self.connection = connection
        self.address = connection.server
        self.channel = connection.channel()
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {connection.token}"),) if connection.token else ()
        self.jobs = jobs_pb2_grpc.JobExecutionServiceStub(self.channel)
        self.logs = logs_pb2_grpc.LogStreamServiceStub(self.channel)
        self.providers = providers_pb2_grpc.ProviderManagementServiceStub(self.channel)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.metrics = metrics_pb2_grpc.MetricsServiceStub(self.channel)
        self.access = access_pb2_grpc.AccessServiceStub(self.channel)
        self.sagas = sagas_pb2_grpc.SagaServiceStub(self.channel)
        self.outbox = outbox_pb2_grpc.OutboxServiceStub(self.channel)
        self.cron = cron_pb2_grpc.CronServiceStub(self.channel)
        self.pools = pools_pb2_grpc.PoolServiceStub(self.channel)
        self.limits = limits_pb2_grpc.LimitServiceStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.report = report_pb2_grpc.ReportServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        return method(request, timeout=timeout or self.timeout, metadata=self.metadata)

    def stream(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
