"""Artifacts' parts: which files a job's patterns take (the agent), and how the server
keeps them (names, limits, files written whole)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hodei_worker.artifacts import _matches, find
from hodei_worker.runner import JobUser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hodei.artifacts import MAX_FILES, ArtifactFilesReached, ArtifactRefused, ArtifactStore, Stored
from hodei.domain.spec import artifact_path_problem
from hodei.errors import InvalidInput, NotFound


def _tree(root: Path) -> None:
    (root / "out/sub").mkdir(parents=True)
    (root / "out/a.txt").write_text("a")
    (root / "out/sub/b.log").write_text("bb")
    (root / "top.log").write_text("t")
    (root / "out/fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "out/fifo")


def test_patterns_take_files_directories_and_globs_but_no_link_out(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    _tree(root)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("k")
    (root / "link").symlink_to(outside / "key")
    (root / "linked_dir").symlink_to(outside)
    found = find(str(root), ["out", "**/*.log", "nothing*", "link", "linked_dir/key"], None)
    assert sorted(found.files) == ["out/a.txt", "out/sub/b.log", "top.log"]
    assert found.files["out/a.txt"] == str(root / "out/a.txt")
    assert found.notes == [
        "artifact out/fifo skipped: not a regular file",
        "no file matches artifact pattern `nothing*`",
        "artifact link skipped: a symbolic link, or a path through one",
        "artifact linked_dir skipped: a symbolic link, or a path through one",
    ]


@pytest.mark.timeout(60)
def test_links_are_not_looked_through_however_they_loop(tmp_path: Path) -> None:
    """A job's links back up its tree: ``glob``'s ``**`` went down each, round and round
    (with two loops, a path for every way round them: the agent never finished, its
    memory growing by the gigabyte, and the job never ended)."""
    root = tmp_path / "work"
    root.mkdir()
    _tree(root)
    (root / "d").mkdir()
    (root / "d/root").symlink_to("/")
    (root / "d/back").symlink_to(root)
    (root / "here").symlink_to(".")
    (root / "also").symlink_to(".")
    found = find(str(root), ["**/*.log", "*/sub", "d/**", "d/root/*", "d/root/etc/passwd", "here"], None)
    assert sorted(found.files) == ["out/sub/b.log", "top.log"]
    assert found.notes == [
        "artifact d/back skipped: a symbolic link, or a path through one",
        "artifact d/root skipped: a symbolic link, or a path through one",
        "artifact here skipped: a symbolic link, or a path through one",
    ]


def test_a_file_whose_name_is_not_utf8_is_skipped_saying_so(tmp_path: Path) -> None:
    """No artifact's name can carry it (a protobuf string): its note, with the name in it,
    broke the agent's log batch, and the job never reported its end."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out/ok.txt").write_text("ok")
    with open(os.path.join(os.fsencode(tmp_path), b"out", b"\xff.txt"), "wb") as odd:
        odd.write(b"x")
    found = find(str(tmp_path), ["out", "out/*.txt"], None)
    assert list(found.files) == ["out/ok.txt"]
    assert found.notes == ["artifact out/\\xff.txt skipped: its name is not UTF-8"]
    assert all(note.encode() for note in found.notes)


# A tree without links, and patterns over its names: what ``_matches`` finds is what
# ``glob`` (recursive) finds, a matched directory standing for its files.
_NAMES = st.sampled_from(["a", "b", ".h", "x.log"])
_PATHS = st.lists(st.lists(_NAMES, min_size=1, max_size=3).map("/".join), max_size=8)
_PARTS = st.sampled_from(["*", "**", "a", "b", "*.log", ".h", ".*", "?", "[ab]", "", "."])
# Relative, as the spec has them (artifact_path_problem).
_PATTERNS = st.lists(_PARTS, min_size=1, max_size=4).map("/".join).filter(lambda p: p.strip("/") and p[0] != "/")


def _as_glob_matches(root: str, pattern: str) -> set[str]:
    paths: set[str] = set()
    for hit in glob.glob(pattern, root_dir=root, recursive=True):
        path = os.path.normpath(os.path.join(root, hit))
        if hit.endswith("/") and not os.path.isdir(path):
            continue  # glob's `a/**` has `a/` whether `a` is a file or missing
        if os.path.isdir(path):
            paths.update(os.path.join(d, name) for d, _, names in os.walk(path) for name in names)
        else:
            paths.add(path)
    return paths


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=_PATHS, pattern=_PATTERNS)
def test_patterns_match_as_glob_matches_where_no_link_is(tmp_path: Path, paths: list[str], pattern: str) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    for path in paths:
        leaf = root / path
        if any(parent.is_file() for parent in leaf.parents) or leaf.is_dir():
            continue  # a name already a file on the way, or a directory
        leaf.parent.mkdir(parents=True, exist_ok=True)
        leaf.write_text(path)
    found = _matches(str(root), pattern)
    assert len(found) == len(set(found))
    assert set(found) == _as_glob_matches(str(root), pattern)


def test_exclusions_leave_out_what_they_match_in_the_same_way(tmp_path: Path) -> None:
    """A directory excluded leaves out its files; a glob its matches; the log says how many."""
    root = tmp_path / "work"
    root.mkdir()
    _tree(root)
    found = find(str(root), ["out", "**/*.log"], None, exclude=["out/sub", "out/fifo", "*.log", "absent"])
    assert sorted(found.files) == ["out/a.txt"]
    assert found.notes == ["3 files left out (--artifact-exclude)"]
    assert find(str(root), ["top.log"], None, exclude=["out"]).notes == []  # nothing it matched was left out


def test_a_job_run_as_another_user_gets_only_what_it_could_read(tmp_path: Path) -> None:
    """What it may read, in a directory it may reach: pytest's tmp_path is under a
    directory of root's (0700), where a stranger reaches nothing."""
    reachable = Path(tempfile.mkdtemp(prefix="hodei-reach-"))
    try:
        reachable.chmod(0o755)
        _finds_only_what_the_user_could_read(reachable)
    finally:
        shutil.rmtree(reachable)
    (tmp_path / "anyones").write_text("a")
    (tmp_path / "anyones").chmod(0o644)
    assert os.stat(tmp_path.parent).st_mode & 0o7 == 0, "pytest's tmp_path is reachable by anyone here"
    info = os.stat(tmp_path / "anyones")
    stranger = JobUser(info.st_uid + 4242, info.st_gid + 4242)
    found = find(str(tmp_path), ["anyones"], stranger)
    assert (found.files, found.notes) == ({}, ["artifact anyones skipped: the job's user may not read it"])


def _finds_only_what_the_user_could_read(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.write_text("m")
    mine.chmod(0o600)
    theirs = tmp_path / "theirs"
    theirs.write_text("t")
    theirs.chmod(0o640)
    info = os.stat(mine)
    owner = JobUser(info.st_uid, info.st_gid)
    stranger = JobUser(info.st_uid + 4242, info.st_gid + 4242)
    assert owner.allows(info, 0o4)
    assert not stranger.allows(info, 0o4)
    assert not stranger.allows(os.stat(theirs), 0o4)
    theirs.chmod(0o644)
    assert stranger.allows(os.stat(theirs), 0o4)
    found = find(str(tmp_path), ["mine", "theirs"], stranger)
    assert list(found.files) == ["theirs"]
    assert found.notes == ["artifact mine skipped: the job's user may not read it"]


def test_a_file_is_stored_whole_with_its_digest_and_read_back(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, 100)
    upload = store.begin("job", 1, "out/a.txt", 6)
    upload.write(b"abc")
    assert not (tmp_path / "job/1/out/a.txt").exists()  # only its part file, until it is whole
    upload.write(b"def")
    stored = upload.finish()
    assert stored == Stored("out/a.txt", 6, "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721")
    assert b"".join(store.read("job", 1, "out/a.txt")) == b"abcdef"
    store.check("job", 1, stored)
    with pytest.raises(InvalidInput, match="is 6 bytes, not 7"):
        store.check("job", 1, Stored("out/a.txt", 7, stored.sha256))
    with pytest.raises(InvalidInput, match="was never stored"):
        store.check("job", 2, stored)
    with pytest.raises(NotFound, match="no longer stored"):
        list(store.read("job", 2, "out/a.txt"))
    store.delete("job")
    assert not (tmp_path / "job").exists()


def test_an_attempt_stores_no_more_than_its_limit(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, 10)
    abandoned = store.begin("job", 1, "a", 6)  # never finished: its part file counts for nothing
    abandoned.write(b"x" * 6)
    first = store.begin("job", 1, "a", 6)
    first.write(b"x" * 6)
    first.finish()
    with pytest.raises(ArtifactRefused, match="b is 5 bytes; 4 of the attempt's 10"):
        store.begin("job", 1, "b", 5)
    again = store.begin("job", 1, "a", 10)  # sent again (its answer lost): replaces itself
    again.write(b"z" * 10)
    again.finish()
    assert (tmp_path / "job/1/a").read_bytes() == b"z" * 10
    with pytest.raises(ArtifactRefused, match="b is 1 bytes; 0 of the attempt's 10"):
        store.begin("job", 1, "b", 1)
    again = store.begin("job", 1, "a", 6)
    again.write(b"x" * 6)
    again.finish()
    lying = store.begin("job", 1, "c", 1)  # said 1 byte, sends more than the room left
    with pytest.raises(ArtifactRefused, match="past the 4 bytes left"):
        lying.write(b"y" * 5)
    lying.discard()
    assert sorted(p.name for p in (tmp_path / "job/1").iterdir() if not p.name.endswith(".part")) == ["a"]
    store.begin("job", 2, "b", 10).discard()  # another attempt has its own room
    abandoned.discard()
    many = ArtifactStore(tmp_path / "many", 1 << 20)
    for index in range(MAX_FILES):
        (many.directory / "job/1").mkdir(parents=True, exist_ok=True)
        (many.directory / f"job/1/f{index}").touch()
    with pytest.raises(ArtifactFilesReached, match=f"stored {MAX_FILES} files, the limit"):
        many.begin("job", 1, "one-more", 0)


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/", "a/.", "bad\nname"])
def test_a_name_that_is_not_a_plain_path_inside_the_job_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="artifact"):
        ArtifactStore(tmp_path, 10).begin("job", 1, name, 1)
    assert not any(tmp_path.iterdir())


def test_patterns_are_checked_as_paths_inside_the_working_directory() -> None:
    assert artifact_path_problem("out/**/*.xml") is None
    assert artifact_path_problem("report.txt") is None
    assert "relative" in (artifact_path_problem("/x") or "")
    assert "no `..`" in (artifact_path_problem("a/../b") or "")
    assert "must not be empty" in (artifact_path_problem("  ") or "")


# Copies a piece three times in a thread of its own, as an artifact's piece is copied on its
# way (read, protobuf, gRPC): ten pieces to warm the thread's arena, then prints that thread's
# page faults over forty more.
_PIECES = """
import resource, sys, threading
from hodei_worker.runner import reuse_freed_memory
if sys.argv[1] == "reuse":
    reuse_freed_memory()
def copies(times):
    for _ in range(times):
        piece = b"\\x01" * (3 << 20)
        protobuf = piece + b"p"
        grpc = protobuf + b"g"
        del piece, protobuf, grpc
def run():
    copies(10)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    copies(40)
    print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=run)
thread.start()
thread.join()
"""


def test_freed_pieces_are_reused_without_page_faults() -> None:
    """By default each copy of a 3 MiB piece faults its pages in again (about 92,000 faults for
    forty pieces copied three times); once freed memory is kept for reuse, hardly any. Compared,
    not bounded: a kernel balancing NUMA memory counts its sampling of the pages in use (a few
    thousand faults a pass) as faults too."""

    def faults(mode: str) -> int:
        ran = subprocess.run([sys.executable, "-c", _PIECES, mode], capture_output=True, text=True, check=True)
        return int(ran.stdout)

    default, reused = faults("default"), faults("reuse")
    assert default > 40 * 768  # the default faults at least a piece's pages a piece
    assert reused * 10 < default
