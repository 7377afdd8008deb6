"""``job run --input PATH``: files from the submitter's machine for the job to start with
(Ray's ``--working-dir``, Argo's input artifacts, ``sbcast``): packed here into one tar
archive, its SHA-256 put in the job's spec, uploaded before the job is submitted
(hodei.inputs keeps it), unpacked by the worker into the job's working directory.

A path is put there under its own name: ``--input data.csv`` is ``data.csv``, ``--input src``
is ``src/…``; a directory written with a trailing slash (``src/``, or ``.``) gives its
contents instead, as rsync reads a source. Links are kept as links (the worker unpacks none
that leads out of the working directory); only files, directories and links are taken.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from hodei._proto import artifacts_pb2
from hodei.artifacts import PIECE_BYTES
from hodei.errors import InvalidInput


@dataclass
class Packed:
    """The archive of a job's --input paths, in a temporary file."""

    archive: IO[bytes]
    sha256: str
    size: int
    files: int
    # Paths --input-exclude left out.
    excluded: int = 0


def pack(paths: Sequence[str], exclude: Sequence[str] = ()) -> Packed:
    """The archive, in a temporary file the caller closes once it is sent; what an
    ``exclude`` pattern matches (``--input-exclude``) left out."""
    archive = tempfile.TemporaryFile()  # noqa: SIM115 - the caller's, until it is uploaded
    try:
        return _packed(archive, paths, Excluded(tuple(exclude)))
    except BaseException:
        archive.close()
        raise


@dataclass
class Excluded:
    """``--input-exclude`` patterns, as .gitignore reads them: one without a ``/`` matches
    a name anywhere (``*.pyc``, ``.git``, ``node_modules``), one with a ``/`` the path
    from the archive's top (``src/build``, ``data/*.tmp``); a directory matched is left out
    whole. Counts what it left out."""

    patterns: tuple[str, ...]
    count: int = 0

    def __call__(self, name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        for pattern in self.patterns:
            anchored = pattern.strip("/")
            if fnmatch.fnmatchcase(name, anchored) if "/" in anchored else fnmatch.fnmatchcase(base, anchored):
                self.count += 1
                return True
        return False


def _packed(archive: IO[bytes], paths: Sequence[str], excluded: Excluded) -> Packed:
    files = 0
    names: set[str] = set()
    # Members in a stable order, owned by no one: the same files give the same archive, so
    # `--idempotency-key` sent again with them is the same request, not another one with the
    # same key. Not compressed, as Docker sends a build's context: gzip, even at its fastest,
    # made a job given 256 MiB of random bytes take 7.9 s longer than one without (32x the
    # floor of copying and hashing them, `just bench-artifacts`), for nothing back; what is
    # sent crosses a network that outruns it.
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            for name, found in _members(path, excluded):
                if name in names:
                    raise InvalidInput(f"--input: {name!r} is given twice (by {path!r} and before)")
                names.add(name)
                info = tar.gettarinfo(found, arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.islnk():  # a second name of a file already in it: sent as a file (no hard links unpacked)
                    info.type, info.linkname, info.size = tarfile.REGTYPE, "", os.stat(found).st_size
                if info.isfile():
                    files += 1
                    with open(found, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    size = archive.tell()
    archive.seek(0)
    digest = hashlib.sha256()
    while piece := archive.read(PIECE_BYTES):
        digest.update(piece)
    archive.seek(0)
    return Packed(archive, digest.hexdigest(), size, files, excluded.count)


def _members(path: str, excluded: Excluded) -> Iterator[tuple[str, str]]:
    """The archive's names and the local paths they come from, for one --input path, in
    a stable order (the same files give the same archive's contents), but those
    ``excluded`` (a directory's whole tree)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise InvalidInput(f"--input {path!r}: {exc.strerror or exc}") from None
    contents = stat.S_ISDIR(mode) and (path.endswith("/") or os.path.basename(path) in (".", ".."))
    if contents:
        base = ""
    else:
        base = os.path.basename(os.path.normpath(path))
        if excluded(base):
            return
        yield base, path
        if not stat.S_ISDIR(mode):
            _check(path, mode)
            return
    for root, directories, names in os.walk(path):
        relative = os.path.relpath(root, path)
        prefix = base if relative == "." else os.path.join(base, relative) if base else relative

        def named(name: str, prefix: str = prefix) -> str:
            return os.path.join(prefix, name) if prefix else name

        directories[:] = sorted(name for name in directories if not excluded(named(name)))  # not walked
        for name in sorted([*directories, *(name for name in names if not excluded(named(name)))]):
            found = os.path.join(root, name)
            _check(found, os.lstat(found).st_mode)  # a linked directory is a link: not walked
            yield named(name), found


def _check(path: str, mode: int) -> None:
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise InvalidInput(f"--input {path!r}: only files, directories and links are sent")


def pieces(packed: Packed) -> Iterator[artifacts_pb2.InputPiece]:
    yield artifacts_pb2.InputPiece(size_bytes=packed.size)
    while data := packed.archive.read(PIECE_BYTES):
        yield artifacts_pb2.InputPiece(data=data)
