"""What a job's disk limit measures on the local provider (the job's home, as du counts
it), and how the watch acts on what a provider measures."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hodei.providers.disk import DiskUse, DiskWatch, tree_bytes

MIB = 1024**2


def test_a_tree_counts_its_blocks_each_file_once_and_no_link_target(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "a" / "b").mkdir(parents=True)
    (home / "a" / "b" / "data").write_bytes(os.urandom(3 * MIB))
    empty = tree_bytes(str(home))
    before = tree_bytes(str(home / "a" / "b"))
    assert 3 * MIB <= before < 3 * MIB + 64 * 1024
    os.link(home / "a" / "b" / "data", home / "again")  # a second name of the same file
    (home / "elsewhere").symlink_to(Path("/usr"))  # a link out of the home: not followed
    with (home / "sparse").open("wb") as sparse:  # 1 GiB long, nothing written
        sparse.truncate(1024**3)
    assert empty <= tree_bytes(str(home)) < empty + 64 * 1024
    assert tree_bytes(str(tmp_path / "gone")) == 0


def test_the_watch_stops_a_worker_past_its_limit_once_and_says_why_until_forgotten(tmp_path: Path) -> None:
    homes = {name: tmp_path / name for name in ("under", "over", "unlimited")}
    for home in homes.values():
        home.mkdir()
        (home / "data").write_bytes(os.urandom(2 * MIB))
    limits = {"under": 4 * MIB, "over": MIB, "unlimited": 0}
    stopped: list[str] = []

    def measure() -> list[DiskUse]:
        return [DiskUse(name, tree_bytes(str(homes[name])), limits[name], f"its home {homes[name]}") for name in homes]

    watch = DiskWatch("local", measure, stopped.append)
    watch.check()
    watch.check()
    assert stopped == ["over"]
    assert watch.why("over") == f"its home {homes['over']} held 2.0 MiB, past the job's disk limit of 1.0 MiB (--disk)"
    assert watch.why("under") is None and watch.why("unlimited") is None
    (homes["under"] / "more").write_bytes(os.urandom(3 * MIB))
    watch.check()
    assert stopped == ["over", "under"]
    watch.forget("over")
    assert watch.why("over") is None
    watch.close()


def test_a_stop_that_failed_is_tried_again_at_the_next_round_and_the_others_still_are() -> None:
    uses = [DiskUse("a", 2 * MIB, MIB, "container a"), DiskUse("b", 2 * MIB, MIB, "container b")]
    tried: list[str] = []

    def stop(worker_id: str) -> None:
        tried.append(worker_id)
        if worker_id == "a" and tried.count("a") == 1:
            raise ConnectionError("the engine is away")

    watch = DiskWatch("docker", lambda: uses, stop)
    watch.check()
    assert tried == ["a", "b"] and watch.why("a") is None and watch.why("b") is not None
    watch.check()
    assert tried == ["a", "b", "a"] and watch.why("a") is not None


def test_the_watch_runs_on_a_thread_of_its_own_from_its_start_to_its_close() -> None:
    measured = threading.Event()

    def measure() -> list[DiskUse]:
        measured.set()
        return []

    watch = DiskWatch("docker", measure, lambda _: None)
    names = {thread.name for thread in threading.enumerate()}
    assert "hodei-docker-disk" not in names  # none before a worker with a limit
    watch.start()
    watch.start()
    assert [t.name for t in threading.enumerate()].count("hodei-docker-disk") == 1
    assert measured.wait(10)
    watch.close()
    assert "hodei-docker-disk" not in {thread.name for thread in threading.enumerate()}
