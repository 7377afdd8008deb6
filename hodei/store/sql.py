"""Named SQL: every query Hodei runs lives in ``queries.sql`` under a ``-- name:`` header."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.M)


@cache
def _queries() -> dict[str, str]:
    text = resources.files("hodei.store").joinpath("queries.sql").read_text()
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise RuntimeError(f"query `{name}` is defined twice in queries.sql")
        found[name] = body.strip().rstrip(";")
    return found


def query(name: str) -> LiteralString:
    """The SQL text of a named query (a LiteralString: it never contains user input)."""
    try:
        return _queries()[name]
    except KeyError:
        raise KeyError(f"no query named `{name}` in hodei/store/queries.sql") from None


def names() -> list[str]:
    return list(_queries())
