"""Replaces the job's secret values with ``***`` in every line of its output, before
the line leaves the worker (to the server, or to the worker's own stdout)."""

from __future__ import annotations

import re
import threading
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
        self._longest = len(ordered[0]) if ordered else 0
        # Per stream, the end of a long line's piece held back for its next piece.
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether there is anything to mask (a job without secrets skips the call per line)."""
        return self._pattern is not None

    @property
    def longest(self) -> int:
        """The longest text masked: what a cut output must be read past to mask its end."""
        return self._longest

    def masked_bytes(self, data: bytes) -> bytes:
        """``data`` with the secrets masked: read as UTF-8 text when there are secrets (bytes
        that are not UTF-8 come out as U+FFFD), as it is when there are none."""
        if self._pattern is None:
            return data
        return self(data.decode(errors="replace")).encode()

    def __call__(self, line: str) -> str:
        if self._pattern is None:
            return line
        return self._pattern.sub(MASK, line)

    def output(self, stream: str, texts: list[str], partial: bool) -> tuple[list[str], bool]:
        """``texts`` of ``stream`` masked, as they may leave the worker, and whether the
        last goes on. A long line comes in pieces (``partial``: the last text goes on in
        the next call): a secret cut between two pieces would match in neither, so the end
        of a piece where one could begin is held back and leads the stream's next texts."""
        with self._lock:
            held = self._held.pop(stream, "")
            if held:
                texts = [held + texts[0], *texts[1:]]
            if partial:
                last = texts[-1]
                cut = self._cut(last)
                self._held[stream] = last[cut:]
                if not cut:  # all of the piece held: what is left ends where it ended
                    texts, partial = texts[:-1], False
                else:
                    texts = [*texts[:-1], last[:cut]]
        return [self(text) for text in texts], partial

    def _cut(self, text: str) -> int:
        """Where ``text`` may be cut with no secret begun before and ending after: any
        secret that begins in the last ``longest - 1`` characters might go on past them."""
        cut = max(len(text) - self._longest + 1, 0)
        assert self._pattern is not None
        for found in self._pattern.finditer(text, max(cut - self._longest, 0)):
            if found.start() < cut < found.end():
                return found.start()
        return cut
