"""Files a job starts with (``job run --input``): how the CLI packs them, how the server
keeps an upload and gives each job its copy, and how the agent unpacks one — nothing
outside the working directory, whatever the archive holds."""

from __future__ import annotations

import io
import os
import pwd
import re
import shutil
import stat
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hodei_worker.artifacts import _unpack
from hodei_worker.runner import JobUser

from hodei.artifacts import ArtifactStore
from hodei.cli.inputs import Packed, pack
from hodei.errors import InvalidInput, LimitReached, NotFound
from hodei.inputs import (
    MOST_KEPT,
    NAMED_SECONDS,
    UNUSED_SECONDS,
    InputStore,
    input_path,
    prune_uploads,
    read_input,
)


def _tree(root: Path) -> None:
    (root / "src/sub").mkdir(parents=True)
    (root / "src/main.py").write_text("print('hi')\n")
    (root / "src/sub/data.txt").write_text("data\n")
    (root / "src/.hidden").write_text("h")
    (root / "src/link.py").symlink_to("main.py")
    (root / "top.txt").write_text("top\n")


def _names(packed: Packed) -> list[str]:
    with packed.archive, tarfile.open(fileobj=packed.archive, mode="r:") as tar:
        return tar.getnames()


def test_a_path_goes_under_its_own_name_and_a_trailing_slash_gives_a_directorys_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    packed = pack(["src", "top.txt"])
    assert (packed.files, packed.size) == (4, packed.archive.seek(0, io.SEEK_END))
    packed.archive.seek(0)
    assert _names(packed) == [
        "src",
        "src/.hidden",
        "src/link.py",
        "src/main.py",
        "src/sub",
        "src/sub/data.txt",
        "top.txt",
    ]
    assert _names(pack(["src/"])) == [".hidden", "link.py", "main.py", "sub", "sub/data.txt"]
    assert _names(pack([str(tmp_path / "src")]))[0] == "src"  # an absolute path: its last name
    monkeypatch.chdir(tmp_path / "src")
    assert _names(pack(["."])) == [".hidden", "link.py", "main.py", "sub", "sub/data.txt"]


def test_excluded_paths_are_left_out_as_gitignore_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    (tmp_path / "src/.git/objects").mkdir(parents=True)
    (tmp_path / "src/.git/objects/x").write_text("x")
    (tmp_path / "src/sub/cache.pyc").write_text("c")
    (tmp_path / "src/main.pyc").write_text("c")
    monkeypatch.chdir(tmp_path)
    packed = pack(["src", "top.txt"], [".git", "*.pyc", "src/sub/data.txt", "top.txt/"])
    assert packed.excluded == 5  # .git (whole), two .pyc, a path from the top, a file named with a /
    assert _names(packed) == ["src", "src/.hidden", "src/link.py", "src/main.py", "src/sub"]
    kept = sorted(_names(pack(["src/"], ["sub"])))
    assert kept == [".git", ".git/objects", ".git/objects/x", ".hidden", "link.py", "main.py", "main.pyc"]


def test_the_same_files_make_the_same_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A submission sent again with its key (--idempotency-key) and the same files is the
    same request: the archive holds no time of its making."""
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    first = pack(["src", "top.txt"])
    time.sleep(1.1)  # a time of its making, were there one, would differ
    second = pack(["src", "top.txt"])
    first.archive.close()
    second.archive.close()
    assert first.sha256 == second.sha256
    (tmp_path / "top.txt").write_text("changed\n")
    changed = pack(["src", "top.txt"])
    changed.archive.close()
    assert changed.sha256 != first.sha256


def test_a_hard_link_is_sent_as_a_file_and_what_cannot_be_sent_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("same")
    os.link(tmp_path / "a", tmp_path / "b")
    packed = pack([str(tmp_path / "a"), str(tmp_path / "b")])
    with packed.archive, tarfile.open(fileobj=packed.archive, mode="r:") as tar:
        assert [(m.name, m.isfile(), m.size) for m in tar.getmembers()] == [("a", True, 4), ("b", True, 4)]
    with pytest.raises(InvalidInput, match=r"^--input '.*/nothing': No such file or directory$"):
        pack([str(tmp_path / "nothing")])
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidInput, match="fifo': only files, directories and links are sent"):
        pack([str(tmp_path)])
    (tmp_path / "fifo").unlink()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("other")
    with pytest.raises(InvalidInput, match="--input: 'a' is given twice"):
        pack([str(tmp_path / "a"), str(tmp_path / "d") + "/"])


def _store(tmp_path: Path, most: int = 1000) -> InputStore:
    return InputStore(ArtifactStore(tmp_path / "artifacts", 10_000), most)


def _upload(store: InputStore, data: bytes, submitter: str = "alice") -> str:
    upload = store.begin(len(data), submitter)
    upload.write(data)
    return store.keep(upload).sha256


def test_an_upload_is_kept_by_its_digest_and_each_job_gets_its_own_copy(tmp_path: Path) -> None:
    store = _store(tmp_path)
    sha256 = _upload(store, b"archive")
    store.attach(sha256, 7, ["job-1", "job-2"], "alice")
    for job in ("job-1", "job-2"):
        path = input_path(store.artifacts, job)
        assert path == tmp_path / "artifacts" / job / "0" / "input.tar"
        assert b"".join(read_input(store.artifacts, job)) == b"archive"
    assert os.stat(input_path(store.artifacts, "job-1")).st_nlink == 3  # links, not copies
    store.copy("job-1", "job-3")  # job retry
    store.artifacts.delete("job-1")  # retention, --artifacts-expire
    assert b"".join(read_input(store.artifacts, "job-2")) == b"archive"
    with pytest.raises(NotFound, match="job job-1's input files are no longer stored"):
        b"".join(read_input(store.artifacts, "job-1"))
    with pytest.raises(NotFound, match="job job-1's input files were deleted with its artifacts: submit it again"):
        store.copy("job-1", "job-4")


def test_where_files_cannot_be_linked_each_job_gets_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    sha256 = _upload(store, b"archive")

    def refuse(source: object, target: object) -> None:
        raise PermissionError(1, "Operation not permitted")  # as a file system without hard links says

    monkeypatch.setattr(os, "link", refuse)
    store.attach(sha256, 7, ["job-1"], "alice")
    assert b"".join(read_input(store.artifacts, "job-1")) == b"archive"
    assert os.stat(input_path(store.artifacts, "job-1")).st_nlink == 1


def test_an_upload_past_the_limit_or_not_there_is_refused_and_an_unnamed_one_goes_after_an_hour(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, most=10)
    with pytest.raises(InvalidInput, match=r"11 bytes; it must be 1 to 10 bytes \(HODEI_MAX_INPUT_BYTES\)"):
        store.begin(11, "alice")
    with pytest.raises(InvalidInput, match="it must be 1 to 10 bytes"):
        store.begin(0, "alice")
    sha256 = _upload(store, b"x" * 10)
    with pytest.raises(InvalidInput, match=r"is 10 bytes, not 9"):
        store.attach(sha256, 9, ["job"], "alice")
    with pytest.raises(NotFound, match=r"no input archive 000000000000… was uploaded by alice in the last hour"):
        store.attach("0" * 64, 10, ["job"], "alice")
    with pytest.raises(InvalidInput, match="input_sha256 must be 64 lowercase hex digits"):
        store.attach("../../etc/passwd", 10, ["job"], "alice")
    store.find(sha256, 10, "alice")  # kept: a job run again with it need not send it again
    with pytest.raises(NotFound, match="was uploaded by bob in the last hour"):
        store.find(sha256, 10, "bob")
    # A digest is no secret (`job get` shows it): another submitter cannot name alice's upload.
    with pytest.raises(NotFound, match=r"was uploaded by mallory in the last hour"):
        store.attach(sha256, 10, ["job"], "mallory")
    assert not (tmp_path / "artifacts" / "job").exists()
    other = _upload(store, b"y" * 10, "bob")
    old = time.time() - UNUSED_SECONDS - 5
    (bobs,) = list(store.uploads.rglob(other))
    os.utime(bobs, (old, old))
    assert prune_uploads(store.artifacts) == 1
    assert [path.name for path in store.uploads.rglob("*") if path.is_file()] == [sha256]
    (alices,) = list(store.uploads.rglob(sha256))
    os.utime(alices, (old, old))
    store.attach(sha256, 10, ["job"], "alice")  # named: kept NAMED_SECONDS more
    assert prune_uploads(store.artifacts) == 0
    assert prune_uploads(store.artifacts, time.time() + NAMED_SECONDS + 5) == 1
    assert b"".join(read_input(store.artifacts, "job")) == b"x" * 10  # the job's copy stays


def test_a_submitter_keeps_at_most_eight_uploads_worth_and_others_are_not_held_up(tmp_path: Path) -> None:
    store = _store(tmp_path, most=10)
    for n in range(MOST_KEPT):
        _upload(store, bytes([n]) * 10)
    with pytest.raises(LimitReached, match=r"^alice has 80 bytes of input uploads kept .* 10 more would pass 80 "):
        store.begin(10, "alice")
    _upload(store, b"b" * 10, "bob")


def _archive(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> str:
    path = tmp_path / "in.tar.gz"
    with tarfile.open(path, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([_file("../escape")], "'../escape': it would be outside the working directory"),
        ([_file("a/../../escape")], "it would be outside the working directory"),
        ([_file("/etc/escape")], "'/etc/escape': it would be outside"),
        ([_special("l", tarfile.SYMTYPE, "/etc")], "'l': a link to '/etc', outside the working directory"),
        ([_special("l", tarfile.SYMTYPE, "../..")], "a link to '../..', outside"),
        ([_special("d", tarfile.DIRTYPE), _special("d/l", tarfile.SYMTYPE, "../../x")], "a link to '../../x'"),
        ([_special("h", tarfile.LNKTYPE, "x")], "'h': only files, directories and links are unpacked"),
        ([_special("f", tarfile.FIFOTYPE)], "'f': only files, directories and links are unpacked"),
        ([_special("c", tarfile.CHRTYPE)], "only files, directories and links are unpacked"),
    ],
)
def test_nothing_is_unpacked_outside_the_working_directory(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], says: str
) -> None:
    root = tmp_path / "work" / "deep"
    root.mkdir(parents=True)
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        _unpack(_archive(tmp_path, *members), str(root), str(tmp_path), None)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work" / "escape").exists()


def test_a_link_unpacked_first_cannot_carry_a_later_member_out(tmp_path: Path) -> None:
    """The check is made where a member would land, links resolved: ``up -> ..`` is inside
    (the working directory itself), ``up/x`` is not."""
    root = tmp_path / "work"
    root.mkdir()
    members = [_special("sub", tarfile.DIRTYPE), _special("sub/up", tarfile.SYMTYPE, ".."), _file("sub/up/../x")]
    with pytest.raises(ValueError, match=re.escape("'sub/up/../x': it would be outside")):
        _unpack(_archive(tmp_path, *members), str(root), str(tmp_path), None)
    assert not (tmp_path / "x").exists()


def test_files_are_unpacked_with_their_names_links_and_safe_modes(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    members = [
        _special("d", tarfile.DIRTYPE),
        _file("d/run.sh", b"#!/bin/sh\n", 0o4777),  # set-uid, writable by all: neither kept
        _file("d/ro.txt", b"ro", 0o400),
        _special("d/again", tarfile.SYMTYPE, "run.sh"),
    ]
    assert _unpack(_archive(tmp_path, *members), str(root), str(tmp_path), None) == (2, 12)
    assert stat.S_IMODE(os.stat(root / "d/run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "d/ro.txt").st_mode) == 0o600
    assert os.readlink(root / "d/again") == "run.sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_for_a_job_run_as_another_user_the_files_are_that_users() -> None:
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own is root's alone: the user could not reach it
    try:
        _as_another_user(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _as_another_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    user = JobUser(nobody.pw_uid, nobody.pw_gid)
    root = tmp_path / "work"
    root.mkdir(mode=0o750)
    os.chown(root, user.uid, user.gid)
    os.chmod(tmp_path, 0o755)
    members = [_special("d", tarfile.DIRTYPE), _file("d/a.txt", b"abc"), _file(".dot", b"d")]
    assert _unpack(_archive(tmp_path, *members), str(root), str(tmp_path), user) == (2, 4)
    for path in (root / "d", root / "d/a.txt", root / ".dot"):
        assert (path.stat().st_uid, path.stat().st_gid) == (user.uid, user.gid)
    assert stat.S_IMODE(root.stat().st_mode) == 0o750  # its mode as it was
    assert [name for name in os.listdir(tmp_path) if name.startswith(".hodei-input-")] == []
    # A working directory the user may not write to: said, nothing left behind.
    os.chown(root, 0, 0)
    with pytest.raises(OSError, match=r"Permission denied for the job's user"):
        _unpack(_archive(tmp_path, _file("b.txt")), str(root), str(tmp_path), user)
    assert not (root / "b.txt").exists()
    assert [name for name in os.listdir(tmp_path) if name.startswith(".hodei-input-")] == []
