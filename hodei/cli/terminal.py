"""Output for people and for scripts: values on stdout, messages on stderr.

On a terminal both go through rich; when piped, stdout is plain text so that
``JOB_ID=$(hodei-jobs-cli job run ...)`` captures exactly the id.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree


def when(message: Message, field: str, timespec: str = "milliseconds", empty: str = "-") -> str:
    """A message's time field as people read it (UTC, ISO 8601), or ``empty`` when unset."""
    if not message.HasField(field):
        return empty
    return stamp(getattr(message, field), timespec)


def stamp(moment: Timestamp, timespec: str = "milliseconds") -> str:
    """A time of the API as people read it (UTC, ISO 8601)."""
    return str(moment.ToDatetime().isoformat(timespec=timespec)) + "Z"


# Control characters but newline and tab, C1's too: what a terminal acts on instead of showing.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# In a table's cell, newline and tab too: a cell is one line, and piped rows are tab-separated.
_CELL_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(found: re.Match[str]) -> str:
    return repr(found.group())[1:-1]


def shown(text: str) -> str:
    """``text`` as it may reach a person's terminal: its control characters written as
    escapes (``\\x1b``). What the server sends holds what submitters wrote (a job's command,
    its arguments, a hold's reason), and an escape sequence in it would otherwise act on
    the terminal of whoever reads it: recolour, hide or rewrite what is shown, set the
    window's title, write the clipboard (kubectl's CVE-2021-25743). A job's output is the
    exception (``output``): printed as it was, colours and all, as `docker logs` does."""
    return _CONTROL.sub(_escaped, text)


def one_line(text: str) -> str:
    """``shown``, and one line: newlines and tabs escaped too (a table's cell, a record
    of the server's log)."""
    return _CELL_CONTROL.sub(_escaped, text)


class Terminal:
    def __init__(self, output: str) -> None:
        self.json = output == "json"
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def value(self, text: str) -> None:
        """A machine-readable value: printed as is, never styled."""
        print(text, flush=True)

    def output(self, text: str, *, stderr: bool, partial: bool) -> None:
        """A job's output as it was: a piece of a long line without a newline after it."""
        stream = sys.stderr if stderr else sys.stdout
        stream.write(text if partial else text + "\n")
        stream.flush()

    def raw(self, data: bytes, *, stderr: bool) -> None:
        """Bytes a command printed, as they were (`job exec`)."""
        stream = sys.stderr if stderr else sys.stdout
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()

    def line(self, text: str, *, stderr: bool = False) -> None:
        (self.err if stderr else self.out).print(shown(text), markup=False)

    def info(self, text: str) -> None:
        self.err.print(shown(text), style="dim", markup=False)

    def success(self, text: str) -> None:
        self.err.print(shown(text), style="green", markup=False)

    def warning(self, text: str) -> None:
        self.err.print(shown(text), style="yellow", markup=False)

    def data(self, payload: Any) -> None:
        print(json.dumps(payload, indent=2, sort_keys=True, default=str), flush=True)

    def line_data(self, payload: Any) -> None:
        """One JSON object on one line: what streaming commands print, line by line."""
        print(json.dumps(payload, sort_keys=True, default=str), flush=True)

    def table(self, columns: list[str], rows: list[list[str]]) -> None:
        rows = [[one_line(cell) for cell in row] for row in rows]
        if not self.out.is_terminal:
            print("\t".join(columns))
            for row in rows:
                print("\t".join(row))
            return
        # Never cut a cell (an id must stay whole to be pasted): fold it onto more lines.
        table = Table(header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*map(Text, row))  # not markup: a job named `[/x]` broke the whole list
        self.out.print(table)

    def tree(self, tree: Tree) -> None:
        """Rich on a terminal; piped, the same tree as indented plain text."""

        def walk(node: Tree, depth: int) -> Iterator[tuple[Tree, int]]:
            yield node, depth
            for child in node.children:
                yield from walk(child, depth + 1)

        for node, _ in walk(tree, 0):
            # Text, not a str: rich would read `[step]` or `[/x]` in it as markup (a step's
            # name vanished, a job's `/tmp/[/x]` raised MarkupError).
            node.label = Text(shown(str(node.label)))
        if self.out.is_terminal:
            self.out.print(tree)
            return
        for node, depth in walk(tree, 0):
            print("  " * depth + str(node.label))

    def error(self, message: str) -> None:
        self.err.print(f"hodei-jobs-cli: error: {shown(message)}", style="bold red", markup=False)

    def abort(self, message: str, code: int = 1) -> NoReturn:
        self.error(message)
        sys.exit(code)


def reader_gone() -> int:
    """The exit code when the reader of stdout went away (`| head`): nothing left to say and
    nobody to say it to, so 1, quietly, as rich does when its own writes hit the closed
    pipe; stdout goes to /dev/null, where the interpreter's last flush cannot fail."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
