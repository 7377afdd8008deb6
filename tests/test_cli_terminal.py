"""What the CLI prints for people: text submitters wrote never acts on the reader's terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.tree import Tree

from hodei.cli.terminal import Terminal, shown


def test_control_characters_are_shown_as_escapes_but_newlines_and_tabs() -> None:
    assert shown("a\x1b[2Jb\x07\x9b\r\tc\nd") == "a\\x1b[2Jb\\x07\\x9b\\r\tc\nd"
    assert shown("ünï ✓") == "ünï ✓"


def test_a_cell_stays_one_cell_and_a_tree_shows_its_labels_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    term = Terminal("text")
    term.table(["NAME", "NOTE"], [["a\tb", "x\ny\x1b]0;t\x07"]])
    tree = Tree("root \x1b[31m")
    tree.add("child\x1b[2J").add("grandchild")
    term.tree(tree)
    term.line("said \x1b[1m")
    assert capsys.readouterr().out == (
        "NAME\tNOTE\na\\tb\tx\\ny\\x1b]0;t\\x07\nroot \\x1b[31m\n  child\\x1b[2J\n    grandchild\nsaid \\x1b[1m\n"
    )


def test_on_a_terminal_what_looks_like_markup_is_shown_as_written() -> None:
    """rich read `[/x]` in a job's name as a closing tag (MarkupError: `job list` failed for
    everyone once such a job existed) and `[wait_for_slot]` in a saga's audit as a style
    (the step's name vanished)."""
    term = Terminal("text")
    screen = io.StringIO()
    term.out = Console(file=screen, force_terminal=True, no_color=True, width=200)
    term.table(["NAME"], [["[/x] [bold]n"]])
    tree = Tree("StepStarted [wait_for_slot]: step wait_for_slot started")
    tree.add("finished: cannot create working directory /tmp/[/x]")
    term.tree(tree)
    shown_on_screen = screen.getvalue()
    assert "[/x] [bold]n" in shown_on_screen
    assert "StepStarted [wait_for_slot]: step" in shown_on_screen and "/tmp/[/x]" in shown_on_screen
