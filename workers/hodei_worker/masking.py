"""Replaces the job's secret values with ``***`` in every line of its output, before
the line leaves the worker (to the server, or to the worker's own stdout)."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# Pieces of a multi-line secret shorter than this are left alone: they would match
# ordinary words (the server refuses whole secrets this short).
MIN_PIECE = 4


class Masker:
    def __init__(self, secrets: Iterable[str]) -> None:
        pieces: set[str] = set()
        for value in secrets:
            # Output is read line by line: a multi-line secret appears one line at a time.
            for piece in [value, *value.splitlines()]:
                clean = piece.strip("\r")
                if len(clean) >= MIN_PIECE:
                    pieces.add(clean)
        # Longest first: a secret containing another is masked whole.
        ordered = sorted(pieces, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(piece) for piece in ordered)) if ordered else None

    @property
    def active(self) -> bool:
        """Whether there is anything to mask (a job without secrets skips the call per line)."""
        return self._pattern is not None

    def __call__(self, line: str) -> str:
        if self._pattern is None:
            return line
        return self._pattern.sub(MASK, line)
