"""What the CLI prints for people: text submitters wrote never acts on the reader's terminal."""

from __future__ import annotations

import pytest
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
