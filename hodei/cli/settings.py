"""``hodei-jobs-cli config …``: the settings the CLI connects with and where each came from
(``view``), and the config file's settings and profiles changed without an editor (``set``,
``unset``, ``use``, ``profiles``), as ``kubectl config`` and ``aws configure`` do. No server
is called.

What ``set`` and ``unset`` change is the table the CLI reads: the chosen profile's (``--profile``,
``$HODEI_PROFILE``, the file's default), else the file's own settings; so what one sets is
what the next command uses. The file is edited in place with tomlkit, which keeps its
comments and layout, and written whole to a new file renamed over it, readable by its
owner only (it may hold tokens).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from hodei.cli.client import (
    KEYS,
    PROFILE_NAME,
    Chosen,
    address_of,
    chosen_profile,
    config_path,
    read_config,
    token_of,
)
from hodei.cli.terminal import Terminal
from hodei.errors import InvalidInput

# Settings that name a file: kept as absolute paths, so that they hold from any directory.
_FILES = {"tls_ca", "tls_cert", "tls_key"}


def config(term: Terminal, args: argparse.Namespace) -> int:
    if args.action == "view":
        return _view(term, args)
    if args.action == "profiles":
        return _profiles(term)
    path = config_path()
    read = read_config(path)  # a file this version cannot read is refused before it is changed
    document = _document(path)
    if args.action == "use":
        _check_profile(args.name)
        if args.name not in read.profiles:
            making = f"`hodei-jobs-cli --profile {args.name} config set server HOST` makes one"
            raise InvalidInput(f"no profile `{args.name}` in {path}: {making}")
        document["profile"] = args.name
        _write(path, document)
        term.info(f"profile {args.name} is used when no other is chosen ({path})")
        return 0
    if args.action == "delete":
        return _delete(term, args.name, path, document, read.profiles)
    profile, _ = chosen_profile(args.profile, read, path)
    table, where = _table(document, profile, path)
    if args.action == "set":
        table[args.key] = _checked(args.key, sys.stdin.read() if args.value == "-" else args.value)
        _write(path, document)
        shown = "(set)" if args.key == "token" else table[args.key]
        term.info(f"{args.key} = {shown} in {where}")
        return 0
    if args.key not in table:
        term.info(f"{args.key} was not set in {where}")
        return 0
    del table[args.key]
    _write(path, document)
    term.info(f"{args.key} unset in {where}")
    return 0


def _delete(term: Terminal, name: str, path: Path, document: TOMLDocument, profiles: Mapping[str, object]) -> int:
    """Removes a profile's table (kubectl's `config delete-context`), and the file's default
    when it named that profile: a default naming no profile would refuse every command."""
    _check_profile(name)
    if name not in profiles:
        raise InvalidInput(f"no profile `{name}` in {path} (`config profiles` lists them)")
    del _profile_tables(document)[name]
    default = document.get("profile") == name
    if default:
        del document["profile"]
    _write(path, document)
    term.info(f"profile {name} deleted from {path}" + ("; it was the default: now none is" if default else ""))
    return 0


def _view(term: Terminal, args: argparse.Namespace) -> int:
    flags = {key: getattr(args, key) for key in ("server", "token", "tls_ca", "tls_cert", "tls_key")}
    chosen = Chosen.of(flags, args.profile)
    settings = {
        key: {"value": None if key == "token" else found.value, "from": found.origin}
        for key, found in chosen.settings.items()
    }
    if term.json:
        term.data(
            {
                "config_file": str(chosen.path),
                "profile": chosen.profile,
                "profile_from": chosen.profile_origin,
                "settings": settings,
            }
        )
        return 0
    term.line(f"Config file: {chosen.path}{'' if chosen.path.exists() else ' (none)'}")
    if chosen.profile:
        term.line(f"Profile: {chosen.profile} (from {chosen.profile_origin})")
    else:
        term.line("Profile: none")
    if "server" not in settings:
        term.line("server: localhost:50051 (the default)")
    for key in sorted(KEYS):
        if key in settings:
            value = "(set)" if key == "token" else settings[key]["value"]
            term.line(f"{key}: {value} (from {settings[key]['from']})")
    return 0


def _profiles(term: Terminal) -> int:
    path = config_path()
    config = read_config(path)
    profiles = sorted(config.profiles.items())
    if term.json:
        term.data(
            [
                {
                    "name": name,
                    "server": table.get("server"),
                    "token": "token" in table,
                    "default": name == config.profile,
                }
                for name, table in profiles
            ]
        )
        return 0
    term.table(
        ["PROFILE", "SERVER", "TOKEN", "DEFAULT"],
        [
            [name, table.get("server", "-"), "yes" if "token" in table else "no", "*" if name == config.profile else ""]
            for name, table in profiles
        ],
    )
    return 0


def _checked(key: str, value: str) -> str:
    """The value as it is to be kept, refused as the settings' reader would refuse it."""
    value = value.strip()
    if not value:
        raise InvalidInput(f"{key} must not be empty: `config unset {key}` removes it")
    if key == "server":
        address_of(value)
    elif key == "token":
        value = token_of(value) or ""
    elif key in _FILES:
        file = Path(value).expanduser().absolute()
        if not file.is_file():
            raise InvalidInput(f"{key} {file}: no such file")
        value = str(file)
    return value


def _check_profile(name: str) -> None:
    if not PROFILE_NAME.fullmatch(name):
        raise InvalidInput(f"a profile's name is 1-63 letters, digits, `.`, `_` and `-`, got `{name}`")


def _document(path: Path) -> TOMLDocument:
    return tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()


def _profile_tables(document: TOMLDocument) -> Table:
    if "profiles" not in document:
        document["profiles"] = tomlkit.table(is_super_table=True)
    profiles = document["profiles"]
    assert isinstance(profiles, Table)
    return profiles


def _table(document: TOMLDocument, profile: str | None, path: Path) -> tuple[Any, str]:
    """The table ``set`` changes, and how it is named: the profile's (made when missing),
    or the file's own settings."""
    if profile is None:
        return document, str(path)
    _check_profile(profile)
    profiles = _profile_tables(document)
    if profile not in profiles:
        profiles[profile] = tomlkit.table()
    return profiles[profile], f"profile {profile} of {path}"


def _write(path: Path, document: TOMLDocument) -> None:
    """The whole file anew, owner-only, renamed over the old one: a reader never sees half
    of it, and its tokens are never readable by others, not even for a moment. (Without
    the blank lines a table or key removed from its top leaves there: tomlkit keeps the
    whitespace after the first one removed.)"""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
    try:
        with os.fdopen(handle, "w") as file:  # mkstemp makes it 0600
            file.write(tomlkit.dumps(document).lstrip("\n"))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    read_config(path)


def add_commands(commands: Any) -> None:
    actions = commands.add_parser(
        "config",
        help="the settings the CLI connects with, and the config file's profiles (no server is called)",
        description=(
            f"The config file ($HODEI_CONFIG, else ~/.config/hodei/config.toml) holds {', '.join(sorted(KEYS))}, "
            "and a [profiles.NAME] table of them for each installation. `set` and `unset` change the chosen "
            "profile's (--profile, $HODEI_PROFILE, the file's default), else the file's own."
        ),
    ).add_subparsers(dest="action", required=True)
    actions.add_parser("view", help="each setting the next command would use, and where it came from")
    actions.add_parser("profiles", help="the file's profiles, the default one marked")
    use = actions.add_parser("use", help="use this profile when no other is chosen (the file's `profile`)")
    use.add_argument("name", help="a profile of the file")
    delete = actions.add_parser("delete", help="delete a profile (its table; the file's default too if it was)")
    delete.add_argument("name", help="a profile of the file")
    change = actions.add_parser("set", help="set one setting (in the chosen profile's table; made when missing)")
    change.add_argument("key", choices=sorted(KEYS), help=", ".join(sorted(KEYS)))
    change.add_argument("value", help="its value; - reads it from standard input (a token, kept out of history)")
    remove = actions.add_parser("unset", help="remove one setting (from the chosen profile's table)")
    remove.add_argument("key", choices=sorted(KEYS), help=", ".join(sorted(KEYS)))
