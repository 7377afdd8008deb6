"""Parsing the seed's flag forms: ``--env "K=V,K2=V2"`` and ``--args "-c '…'"``."""

from __future__ import annotations

import argparse
import math
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hodei._proto import limits_pb2
from hodei.domain.base import check_idempotency_key
from hodei.domain.duration import seconds_of
from hodei.domain.job import check_signal
from hodei.domain.limit import INHERITED, Bound
from hodei.domain.spec import AFTER_CONDITIONS, LIMITS
from hodei.errors import InvalidInput

_ITEM_START = re.compile(r"(?<!\\),(?=[A-Za-z_][A-Za-z0-9_]*=)")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# _KEY in words, for the refusals.
_KEY_RULE = "made of ASCII letters, digits and _, not beginning with a digit"


def parse_env(values: list[str]) -> dict[str, str]:
    """Each ``--env`` holds one or more ``KEY=VALUE`` separated by commas; a comma
    not followed by ``KEY=`` belongs to the value (``A=1,2``), and so does one written
    ``\\,`` (``Q=a=1\\,b=2``: Helm's ``--set`` escape)."""
    env: dict[str, str] = {}
    for value in values:
        for item in _ITEM_START.split(value):
            key, sep, val = item.partition("=")
            if not sep or not _KEY.match(key):
                raise InvalidInput(f"malformed --env item `{item}`: expected KEY=VALUE with KEY {_KEY_RULE}")
            env[key] = val.replace("\\,", ",")
    return env


def _pairs(values: list[str], flag: str, what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key):
            raise InvalidInput(f"malformed {flag} `{key}…`: expected NAME={what} with NAME {_KEY_RULE}")
        if key in found:
            raise InvalidInput(f"{flag} {key} is given twice")
        found[key] = value
    return found


def parse_secrets(values: list[str]) -> dict[str, str]:
    """``--secret NAME=VALUE``; the value may hold commas and ``=`` (unlike --env).
    An error never repeats the value."""
    return _pairs(values, "--secret", "VALUE")


def parse_secret_files(values: list[str]) -> dict[str, str]:
    """``--secret-file NAME=PATH``: the file's text, without one trailing newline."""
    secrets = {}
    for name, path in _pairs(values, "--secret-file", "PATH").items():
        text = text_of(path, f"--secret-file {name}")
        secrets[name] = text[:-1] if text.endswith("\n") else text
    return secrets


def parse_env_files(paths: list[str], flag: str = "--env-file") -> dict[str, str]:
    """``--env-file PATH`` (or ``--secret-env-file``): one ``KEY=VALUE`` a line, as
    ``docker run --env-file`` reads it: blank lines and lines starting with ``#`` skipped,
    the value taken as written (no quotes removed, commas kept); a later file's KEY wins.
    An error names the line, never its value."""
    env: dict[str, str] = {}
    for path in paths:
        env.update(parse_env_lines(text_of(path, flag), f"{flag} {path}"))
    return env


def parse_env_lines(text: str, where: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (``parse_env_files``) or of the console's form."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY.match(key.strip()):
            shell = (
                " (`export` is a shell's word: an env file has KEY=VALUE lines)" if key.startswith("export ") else ""
            )
            raise InvalidInput(f"{where}, line {number}: expected KEY=VALUE with KEY {_KEY_RULE}{shell}")
        env[key.strip()] = value
    return env


def text_of(path: str, flag: str) -> str:
    """A file the user named, as text; an error names the flag and never shows the content."""
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise InvalidInput(f"{flag}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{flag}: {path} is not UTF-8 text (byte {exc.start})") from None


def parse_args(value: str | None) -> list[str]:
    """Splits ``--args`` the way a shell would."""
    if not value:
        return []
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise InvalidInput(f"malformed --args `{value}`: {exc}") from None


def comma_list(text: str) -> list[str]:
    """``--on FAILED,TIMEOUT``, ``--kind pool,limit``: the parts, blanks dropped (the server
    checks them and says which is wrong)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"malformed --label `{item}`: expected KEY=VALUE")
        labels[key.strip()] = val
    return labels


_ARRAY_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


@dataclass(frozen=True)
class ArrayOption:
    """``--array``: the indices, and how many of its jobs may run at once (``%N``; 0: no limit)."""

    indices: list[int]
    limit: int = 0


def parse_array(value: str) -> ArrayOption:
    """``--array``, as Slurm's: ``0-9``, ``1,3,5-7``, ``0-20:5`` (every fifth), in order;
    ``%4`` after them: at most four of its jobs at once."""
    items, sep, limit = value.partition("%")
    indices: list[int] = []
    for item in items.split(","):
        match = _ARRAY_ITEM.match(item.strip())
        if match is None:
            raise argparse.ArgumentTypeError(
                f"takes indices such as 0-9, 1,3,5-7 or 0-20:5, then %N to run at most N at once; got {value!r}"
            )
        first, last, step = match.group(1), match.group(2) or match.group(1), match.group(3) or "1"
        if int(last) < int(first) or int(step) == 0:
            raise argparse.ArgumentTypeError(
                f"`{item.strip()}` is no range: write the lower index first, a step from 1"
            )
        if (int(last) - int(first)) // int(step) >= LIMITS.array_jobs:
            raise argparse.ArgumentTypeError(f"an array of at most {LIMITS.array_jobs} jobs, got {value!r}")
        indices.extend(range(int(first), int(last) + 1, int(step)))
    if not sep:
        return ArrayOption(indices)
    if not limit.strip().isdigit() or not 1 <= int(limit) <= LIMITS.array_jobs:
        raise argparse.ArgumentTypeError(
            f"%N: at most N of the array's jobs at once, N from 1 to {LIMITS.array_jobs}; got {value!r}"
        )
    return ArrayOption(indices, int(limit))


def parse_after(values: list[str]) -> dict[str, str]:
    """``--after ID[:ok|:notok|:any]`` (Slurm's afterok, afternotok, afterany; ok when
    none is given): job id, prefix or ``@latest`` -> condition."""
    after: dict[str, str] = {}
    for item in values:
        job_ref, sep, condition = item.partition(":")
        job_ref, condition = job_ref.strip(), condition.strip().lower() if sep else "ok"
        if not job_ref:
            raise InvalidInput(f"malformed --after `{item}`: expected ID, ID:ok, ID:notok or ID:any")
        if condition not in AFTER_CONDITIONS:
            raise InvalidInput(
                f"malformed --after `{item}`: the condition must be ok (once it succeeded), notok (once it "
                "failed, timed out or was cancelled) or any (once it ended)"
            )
        if job_ref in after:
            raise InvalidInput(f"--after names job {job_ref} twice")
        after[job_ref] = condition
    return after


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTP]i?)?B?$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
    "TI": 1024**4,
    "PI": 1024**5,
}


def parse_size(value: str | None, flag: str, most: str) -> int:
    """``512Mi``, ``1G``, ``1073741824`` (``--memory``, ``--disk``); 0 for none. ``most``
    says the largest the server takes, for a number past any size."""
    if not value:
        return 0
    match = _SIZE.match(value.strip())
    if not match:
        raise InvalidInput(f"malformed {flag} `{value}`: use bytes or a unit such as 512Mi or 1G")
    number = float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if not math.isfinite(number):  # hundreds of digits: int() of it was a traceback
        raise InvalidInput(f"{flag} `{value[:32]}…` is past any size: at most {most}")
    return int(number)


def parse_duration(value: str | None) -> float | None:
    """A positive duration (``seconds_of``); None for none/never."""
    if value is None or value.strip().lower() in ("", "never", "none"):
        return None
    seconds = seconds_of(value)
    if seconds is None or seconds <= 0:
        raise InvalidInput(f"malformed duration `{value}`: use e.g. 3600, 90m, 12h, 30d or never")
    return seconds


def moment(text: str, flag: str) -> datetime:
    """ISO 8601 (``2026-11-29T10:00:00Z``); a time without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{flag} takes an ISO 8601 time such as 2026-11-29T10:00:00Z, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _from_now(value: str, flag: str, ahead: bool) -> datetime:
    """A duration from now, back or ``ahead`` (``10m``, ``2h``, seconds), or a time (``moment``)."""
    seconds = seconds_of(value)
    if seconds is not None:
        try:
            return datetime.now(UTC) + timedelta(seconds=seconds if ahead else -seconds)
        except OverflowError:  # past the calendar's years 1 to 9999 (was a traceback)
            raise InvalidInput(
                f"takes a duration{' from now' if ahead else ''} that stays within the years 1 to 9999, got {value!r}"
            ) from None
    try:
        return moment(value, flag)
    except InvalidInput:
        raise InvalidInput(
            f"takes a duration{' from now' if ahead else ''} such as 10m or 2h, or an ISO 8601 time such as "
            f"2026-11-29T{'22' if ahead else '10'}:00:00Z, got {value!r}"
        ) from None


def since_moment(value: str) -> datetime:
    """A duration back from now or a time (``_from_now``); the console's job list reads its
    `since` box with it too."""
    return _from_now(value, "--since", ahead=False)


def since(value: str) -> datetime:
    """``--since``, and ``job history --at`` (``since_moment``)."""
    try:
        return since_moment(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def idempotency_key(value: str) -> str:
    """``--idempotency-key`` (``check_idempotency_key``)."""
    try:
        return check_idempotency_key(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def begin(value: str) -> str:
    """``--begin``: a duration from now or a time (``_from_now``), as the ISO 8601 time the
    spec carries."""
    try:
        return _from_now(value, "--begin", ahead=True).isoformat()
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def duration(value: str) -> float:
    """Seconds, or a duration such as 30s or 2m (``seconds_of``): a cancel's ``--grace`` (0
    is SIGKILL at once, what --force says), a cron job's ``--starting-deadline``."""
    seconds = seconds_of(value)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"takes seconds or a duration such as 30s, 2m or 1h30m, got {value!r}")
    return seconds


def span(value: str) -> float:
    """A job's ``--timeout``, ``--queue-timeout`` or ``--retry-backoff``: any number of
    seconds, which the checks that name the option refuse when it is not one they take
    (``-5``: "must be a positive number of seconds"), or a duration (``duration``)."""
    try:
        return float(value)
    except ValueError:
        return duration(value)


# The largest number a request's whole-number fields carry (proto int32).
WIRE_INT_MAX = 2**31 - 1


def count(value: str) -> int:
    """A ``--limit`` or ``--version``: a whole number from 1. Zero would go out as the
    field's unset value (proto3), which the server reads as its default, not as none."""
    return _whole(value, 1)


def tail_count(value: str) -> int:
    """``--tail N``: a whole number from 0 (none so far: only what comes, with --follow)."""
    return _whole(value, 0)


def add_limit(parser: argparse.ArgumentParser, default: int, listed: str) -> None:
    """``--limit N``: how many of ``listed`` a listing shows, at most."""
    parser.add_argument(
        "--limit", type=count, default=default, metavar="N", help=f"at most N {listed} (default {default})"
    )


def whole(value: str) -> int:
    """A whole number from 0 (``--offset``, a provider's capacity)."""
    return _whole(value, 0)


def _whole(value: str, least: int) -> int:
    """Bounded by what the request's field can carry: past it, building the request would
    fail with a ValueError instead of a clear refusal."""
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if not least <= number <= WIRE_INT_MAX:
        raise argparse.ArgumentTypeError(f"takes a whole number from {least} to {WIRE_INT_MAX}, got {value!r}")
    return number


def limit_bound(value: str) -> Bound:
    """A submitter's limit as ``limit set`` (and the console's form) takes it: a number,
    ``none`` (no limit, whatever ``*`` says) or ``*`` (``*``'s)."""
    if value in ("none", INHERITED):
        return None if value == "none" else INHERITED
    try:
        return _whole(value, 0)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"takes a number, none (no limit) or * (*'s), got {value!r}") from None


def bound_message(bound: Bound) -> limits_pb2.Bound:
    if bound is None:
        return limits_pb2.Bound(unlimited=True)
    return limits_pb2.Bound(inherited=True) if bound == INHERITED else limits_pb2.Bound(at_most=bound)


def signal_name(value: str) -> str:
    """``job signal --signal``: USR1, usr1 or SIGUSR1 -> USR1."""
    try:
        return check_signal(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
