"""Which failed attempts of a job run again (``--retry-on``): a job with ``--retry N``
runs again after any failed attempt (exit code not 0, or timed out), but a failure is not
always worth another try — a usage error fails the same way every time, while a lost
connection (a program's own "try again" code, EX_TEMPFAIL 75) or an OOM kill (137) may
pass. GitLab CI's ``retry:exit_codes``, a Kubernetes Job's ``podFailurePolicy`` with
``onExitCodes`` and Argo's ``retryStrategy`` let their users say which; so does this.

A rule is a list of terms, each an exit code (``75``), a range of them (``128-255``) or
``timeout``; one beginning with ``!`` names failures never retried. A failed attempt runs
again when its retries are not used up, it matches a term without ``!`` (or there is none)
and it matches no term with ``!``: ``75,timeout`` retries only those, ``!2`` every failure
but exit code 2, ``1-125,!2`` exit codes 1 to 125 but 2. A timed-out attempt is a
``timeout`` whatever code its processes ended with. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hodei.domain.base import canonical_terms
from hodei.errors import InvalidInput, excerpt

TIMEOUT = "timeout"
# Terms a rule may have: the codes a process can exit with are 256, and ranges name many.
MOST_TERMS = 32
_FORM = "an exit code 1-255, a range such as 128-255, or timeout; `!` before one never retries it"


@dataclass(frozen=True)
class RetryTerm:
    """Exit codes ``low`` to ``high``, or a timeout (``timeout``); ``never``: written with
    ``!``, failures it names are not retried."""

    low: int = 0
    high: int = 0
    timeout: bool = False
    never: bool = False

    @classmethod
    def parse(cls, text: str) -> RetryTerm:
        written = text.strip()
        never = written.startswith("!")
        body = written[1:].strip() if never else written
        if body.lower() == TIMEOUT:
            return cls(timeout=True, never=never)
        low_text, dash, high_text = body.partition("-")
        low, high = _code(low_text), _code(high_text) if dash else _code(low_text)
        if low is None or high is None:
            raise InvalidInput(f"--retry-on term `{excerpt(text)}`: expected {_FORM}")
        if low == 0:
            raise InvalidInput(f"--retry-on term `{excerpt(text)}`: exit code 0 is a success, never retried")
        if low > high:
            raise InvalidInput(f"--retry-on term `{excerpt(text)}`: the range's first code is past its last")
        return cls(low, high, never=never)

    def matches(self, exit_code: int | None, timed_out: bool) -> bool:
        if self.timeout:
            return timed_out
        return not timed_out and exit_code is not None and self.low <= exit_code <= self.high

    def __str__(self) -> str:
        body = TIMEOUT if self.timeout else str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"!{body}" if self.never else body


def _code(text: str) -> int | None:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 3:
        return None
    code = int(text)
    return code if code <= 255 else None


def retry_terms(texts: Iterable[str]) -> tuple[RetryTerm, ...]:
    """A rule as written (``--retry-on``, a spec's ``retry_on``); refuses a bad term by
    name, and too many."""
    terms = tuple(RetryTerm.parse(text) for text in texts)
    if len(terms) > MOST_TERMS:
        raise InvalidInput(f"--retry-on has {len(terms)} terms; the limit is {MOST_TERMS}")
    return terms


def retry_on_problems(texts: Sequence[str], retries: int) -> list[str]:
    try:
        retry_terms(texts)
    except InvalidInput as exc:
        return [exc.message]
    if texts and retries <= 0:
        return ["--retry-on says which failures are retried, and the job has no retries (--retry N)"]
    return []


def canonical_retry_on(texts: Iterable[str]) -> tuple[str, ...]:
    """A rule in the one form a spec keeps (`` 075 `` is ``75``, ``TIMEOUT`` ``timeout``,
    ``3-3`` ``3``)."""
    return canonical_terms(texts, RetryTerm.parse)


def retried(rule: Sequence[str], exit_code: int | None, timed_out: bool) -> bool:
    """Whether a failed attempt (one that ended with ``exit_code``, or timed out) is one
    the rule runs again; an empty rule retries every failure."""
    terms = retry_terms(rule)
    wanted = [term for term in terms if not term.never]
    if wanted and not any(term.matches(exit_code, timed_out) for term in wanted):
        return False
    return not any(term.matches(exit_code, timed_out) for term in terms if term.never)
