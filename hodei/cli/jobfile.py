"""``job run --file FILE``: a job written down, as ``kubectl apply -f``, ``nomad job run`` and
``argo submit`` take theirs, to keep beside the code it runs and change by review.

The file is YAML (or JSON, which YAML reads too) holding the job's spec in the shape
``job get ID -o json`` prints as ``spec``, so ``job get ID -o json | jq .spec | job run --file -``
submits a job again as it was; or several jobs, a YAML document each, submitted together, each
starting after others of them that its ``after`` names by name (``hodei.domain.workflow``).
Hand-written files may give sizes and durations as people write them (``memory_bytes:
512Mi``, ``timeout_seconds: 10m``). Every field is checked for
its type here, naming the field (``JobSpec.from_payload`` reads the API's dicts and would
turn a list into its text); the spec's own bounds are checked as for flags
(``JobSpec.validate``). Secret values never go in a file: a file names them
(``secret_names``) and ``--secret`` gives them.
"""

from __future__ import annotations

import argparse
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import yaml

from hodei.cli.parsing import parse_size, text_of
from hodei.domain.duration import seconds_of
from hodei.domain.spec import DEFAULT_TIMEOUT_SECONDS, LIMITS, JobSpec, Resources
from hodei.domain.workflow import MOST_JOBS
from hodei.errors import InvalidInput

_HINTS = typing.get_type_hints(JobSpec)
_QUOTE = ' (quote a value YAML would read otherwise: "1", "true")'
_DURATIONS = {
    "timeout_seconds",
    "queue_timeout_seconds",
    "retry_backoff_seconds",
    "retry_backoff_max_seconds",
    "artifacts_expire_seconds",
}
_SIZES = {"memory_bytes": f"{LIMITS.max_memory_bytes} bytes (1 TiB)", "disk_bytes": f"{LIMITS.max_disk_bytes} bytes"}


def specs_from_file(path: str) -> list[JobSpec]:
    """The jobs ``path`` holds (``-``: standard input): one, or several YAML documents
    (``---`` between them), submitted together (``hodei.domain.workflow``)."""
    text = sys.stdin.read() if path == "-" else text_of(path, "--file")
    where = "standard input" if path == "-" else path
    try:
        documents = [document for document in yaml.safe_load_all(text) if document is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidInput(f"{where} is not YAML or JSON{at}: {getattr(exc, 'problem', None) or exc}") from None
    if len(documents) > MOST_JOBS:
        raise InvalidInput(f"{where} holds {len(documents)} jobs; at most {MOST_JOBS} are submitted together")
    if len(documents) > 1:
        return [_spec(f"{where}, job {place}", document) for place, document in enumerate(documents, 1)]
    return [_spec(where, documents[0] if documents else None)]


def _spec(where: str, document: Any) -> JobSpec:
    if not isinstance(document, dict):
        raise InvalidInput(f"{where} must hold a job's spec (a mapping of its fields, as `job get -o json`'s spec)")
    known = {f.name for f in fields(JobSpec)}
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field {', '.join(unknown)}; a job's fields are {', '.join(sorted(known))}"
        )
    if "command" not in document:
        raise InvalidInput(f"{where}: command is needed (a shell command line, or a program with args)")
    given = {name: _checked(where, name, value) for name, value in document.items()}
    # What `job run` takes when its flags say nothing.
    return JobSpec.from_payload({"name": "", "timeout_seconds": DEFAULT_TIMEOUT_SECONDS, **given})


def _checked(where: str, name: str, value: Any) -> Any:
    """``value`` as the spec's field ``name`` takes it, or InvalidInput naming the field."""
    hint = _HINTS[name]
    if value is None:
        return None  # the field's default
    if hint is Resources:
        return _resources(where, value)
    if name in _DURATIONS:
        return _seconds(where, name, value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{where}: {name} must be a whole number, got {value!r}")
        return value
    if name in ("input_sha256", "input_bytes") and value:
        raise InvalidInput(f"{where}: {name} names files uploaded for one job: give them with --input PATH")
    if name == "retry_on":  # exit codes are numbers to YAML: `retry_on: [75, timeout]`
        if not isinstance(value, list) or not all(
            isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool)) for item in value
        ):
            raise InvalidInput(f"{where}: retry_on must be a list of exit codes, ranges and timeout, got {value!r}")
        return [str(item) for item in value]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidInput(f"{where}: {name} must be a list of strings{_QUOTE}, got {value!r}")
        return value
    if origin is Mapping:
        if not isinstance(value, dict) or not all(isinstance(v, str) and isinstance(k, str) for k, v in value.items()):
            raise InvalidInput(f"{where}: {name} must map names to strings{_QUOTE}, got {value!r}")
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: {name} must be a string{_QUOTE}, got {value!r}")
    return value


def _seconds(where: str, name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    seconds = seconds_of(value) if isinstance(value, str) else None
    if seconds is None:
        raise InvalidInput(f"{where}: {name} must be seconds or a duration such as 90s, 10m or 1h30m, got {value!r}")
    return seconds


def _resources(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: resources must be a mapping of cpu_cores, memory_bytes, disk_bytes")
    unknown = sorted(str(key) for key in value if key not in ("cpu_cores", "memory_bytes", "disk_bytes"))
    if unknown:
        raise InvalidInput(f"{where}: unknown field resources.{', resources.'.join(unknown)}")
    found: dict[str, Any] = {}
    cpu = value.get("cpu_cores")
    if cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu):
            raise InvalidInput(f"{where}: resources.cpu_cores must be a number of cores, got {cpu!r}")
        found["cpu_cores"] = float(cpu)
    for size, most in _SIZES.items():
        given = value.get(size)
        if given is None:
            continue
        if isinstance(given, int) and not isinstance(given, bool):
            found[size] = given
        elif isinstance(given, str):
            found[size] = parse_size(given, f"resources.{size} in {where}", most)
        else:
            raise InvalidInput(f"{where}: resources.{size} must be bytes or a size such as 512Mi, got {given!r}")
    return found


# The flags that give a secret's value: with --file, the only part of a job given by flags.
SECRET_FLAGS = {"secret", "secret_file", "secret_env_file"}


def refuse_spec_flags(args: argparse.Namespace) -> None:
    """With ``--file`` the file is the spec: a flag that would change it (one of
    ``args.spec_defaults``, given another value) is refused, naming it, rather than one of
    the two silently winning."""
    given = [
        "--" + dest.replace("_", "-")
        for dest, default in args.spec_defaults.items()
        if dest not in SECRET_FLAGS and getattr(args, dest) != default
    ]
    if given:
        raise InvalidInput(
            f"--file gives the job's spec: {', '.join(given)} would change it; edit the file instead "
            "(--secret, --secret-file and --secret-env-file give its secrets' values)"
        )
