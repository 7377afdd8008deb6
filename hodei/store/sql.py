"""Named SQL: every query Hodei runs lives in ``queries.sql`` under a ``-- name:`` header;
SQL that several share under a ``-- part:`` header, written into each where a line says
``@part``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import LiteralString

_HEADER = re.compile(r"^-- (name|part): (\w+)\s*$", re.M)
# A line naming a part (``-- part:``), which it stands for: SQL that several queries share.
_PART = re.compile(r"^[ \t]*@(\w+)[ \t]*$", re.M)
# A line that is a comment and nothing else, a comment ending a line of SQL, and a line's
# indentation.
_COMMENT_LINE = re.compile(r"^[ \t]*--.*\n?", re.M)
_TRAILING_COMMENT = re.compile(r"^(?P<sql>.*?)[ \t]+--.*$", re.M)
_INDENT = re.compile(r"^[ \t]+", re.M)


def _without_trailing_comment(line: re.Match[str]) -> str:
    """The line's SQL, unless its `--` is inside a string (an odd number of quotes before it)."""
    sql = line.group("sql")
    return sql if sql.count("'") % 2 == 0 else line.group(0)


@cache
def _queries() -> dict[str, str]:
    text = resources.files("hodei.store").joinpath("queries.sql").read_text()
    pieces = _HEADER.split(text)
    found: dict[str, str] = {}
    shared: dict[str, str] = {}
    for kind, name, body in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        if name in found or name in shared:
            raise RuntimeError(f"`{name}` is defined twice in queries.sql")
        sql = _TRAILING_COMMENT.sub(_without_trailing_comment, _COMMENT_LINE.sub("", body))
        (found if kind == "name" else shared)[name] = _INDENT.sub("", sql).strip().rstrip(";")

    def part(line: re.Match[str]) -> str:
        try:
            return shared[line.group(1)]
        except KeyError:
            raise RuntimeError(f"queries.sql names no part `{line.group(1)}`") from None

    return {name: _PART.sub(part, sql) for name, sql in found.items()}


def query(name: str, constants: Mapping[str, bool] | None = None) -> LiteralString:
    """The SQL text of a named query (a LiteralString: it never contains user input),
    without its comments and indentation: they are for readers of queries.sql, and
    psycopg parses a query longer than 4,096 characters again at every execution where it
    caches a shorter one's parse (the append's statement was ~6,000 characters as written:
    140 us a save).

    ``constants``: the query's ``%(flag)s`` written as TRUE or FALSE, for a choice fixed for
    a process's life (the queue's order): PostgreSQL then plans only the branch chosen,
    where a parameter had it plan both at every execution (3 ms an admission round)."""
    try:
        text = _queries()[name]
    except KeyError:
        raise KeyError(f"no query named `{name}` in hodei/store/queries.sql") from None
    for flag, value in (constants or {}).items():
        placeholder = "%(" + flag + ")s"
        if placeholder not in text:
            raise KeyError(f"query `{name}` has no {placeholder}")
        text = text.replace(placeholder, "TRUE" if value else "FALSE")
    return text


def names() -> list[str]:
    return list(_queries())
