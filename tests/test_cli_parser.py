"""The CLI's own description of itself: `--help` of every command says what each of its
options and arguments is."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from hodei.cli.main import parser


def _unexplained(command: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[str]:
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _unexplained(sub, (*path, name))
        elif action.help is None:
            yield f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"


def test_every_option_and_argument_of_every_command_has_its_help() -> None:
    assert list(_unexplained(parser(), ("hodei-jobs-cli",))) == []
