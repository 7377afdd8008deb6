"""``hodei-jobs-cli job artifacts``: the files a job left (``job run --artifact``),
listed, or saved where the caller says."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from hodei._proto import artifacts_pb2
from hodei.cli.client import Client
from hodei.cli.jobs import add_job_id
from hodei.cli.parsing import count
from hodei.cli.terminal import Terminal
from hodei.domain.phases import size_text
from hodei.errors import InvalidInput, NoSuchAttempt, NotFound
from hodei.wire import message_dict


def artifacts(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    listed = client.call(client.artifacts.ListArtifacts, artifacts_pb2.ListArtifactsRequest(job_id=args.job_id))
    matching = _matching(listed, args.names, args.attempt)
    if args.save is None:
        return _show(term, listed, matching)
    # Each name's latest attempt (the listing is in the order they were stored).
    chosen = list({artifact.name: artifact for artifact in matching}.values())
    if args.save == "-":
        if len(chosen) != 1:
            raise InvalidInput(f"--save - writes one artifact to stdout; {len(chosen)} match: name one")
        _save(client, listed.job_id, chosen[0], sys.stdout.buffer)
        return 0
    for artifact in chosen:
        path = _save_under(client, listed.job_id, artifact, Path(args.save))
        term.line(f"{path} ({size_text(artifact.size_bytes)})")
    return 0


def _matching(
    listed: artifacts_pb2.ListArtifactsResponse, names: list[str], attempt: int | None
) -> list[artifacts_pb2.Artifact]:
    """The artifacts named (none named: all) of ``attempt`` (None: every attempt's)."""
    if attempt is not None and attempt > listed.attempts:
        raise NoSuchAttempt(listed.job_id, listed.attempts, attempt)
    found = [a for a in listed.artifacts if attempt in (None, a.attempt) and (not names or a.name in names)]
    missing = sorted(set(names) - {artifact.name for artifact in found})
    if missing:
        which = f" of attempt {attempt}" if attempt else ""
        gone = " (its artifacts were deleted by retention)" if listed.expired else ""
        raise NotFound(f"job {listed.job_id} has no artifact {', '.join(missing)}{which}{gone}")
    return found


def _show(term: Terminal, listed: artifacts_pb2.ListArtifactsResponse, shown: list[artifacts_pb2.Artifact]) -> int:
    if term.json:
        term.data({**message_dict(listed), "artifacts": [message_dict(a) for a in shown]})
        return 0
    if not shown:
        gone = "its artifacts were deleted by retention" if listed.expired else "no artifacts"
        term.info(f"job {listed.job_id}: {gone}")
        return 0
    term.table(
        ["ATTEMPT", "NAME", "SIZE", "SHA256"],
        [[str(a.attempt), a.name, str(a.size_bytes), a.sha256] for a in shown],
    )
    return 0


def _save(client: Client, job_id: str, artifact: artifacts_pb2.Artifact, target: BinaryIO) -> None:
    """Writes the artifact's bytes; refuses them if they are not the ones the job stored."""
    from hodei_worker.artifacts import write_pieces  # as the agent does (10 ms to import: only when saving)

    request = artifacts_pb2.ReadArtifactRequest(job_id=job_id, name=artifact.name, attempt=artifact.attempt)
    sha256 = write_pieces(client.stream(client.artifacts.ReadArtifact, request), target)
    target.flush()
    if sha256 != artifact.sha256:
        raise InvalidInput(f"artifact {artifact.name}: the bytes read are not those stored (SHA-256 differs)")


def _save_under(client: Client, job_id: str, artifact: artifacts_pb2.Artifact, directory: Path) -> Path:
    """Saves it at its name under ``directory``, written whole or not at all."""
    path = directory / artifact.name
    if directory.resolve() not in path.resolve().parents:
        raise InvalidInput(f"artifact {artifact.name!r} would be saved outside {directory}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise InvalidInput(f"cannot save to {path.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as target:
            _save(client, job_id, artifact, target)
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return path


def add_commands(job: Any) -> None:
    """Adds ``job artifacts`` to ``job``'s subcommands."""
    parser = job.add_parser("artifacts", help="list the files a job left (run --artifact), or save them (--save DIR)")
    add_job_id(parser)
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these artifacts (as listed)")
    parser.add_argument(
        "--save",
        metavar="DIR",
        help="save them under DIR, each at its name (directories made); `-`: one artifact's bytes to stdout",
    )
    parser.add_argument(
        "--attempt",
        type=count,
        metavar="N",
        help="only the N-th attempt's (default: every attempt's are listed, and each name's latest saved)",
    )
    parser.set_defaults(handler=artifacts)
