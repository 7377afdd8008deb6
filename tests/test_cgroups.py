"""Where a local worker's --cpu and --memory are written, on directory trees laid out as the
kernel's cgroup hierarchies are: cgroup v2 with its controllers, a hybrid host whose
controllers are bound to cgroup v1 (ours), and a host with neither. The kernel's side (the
limits holding) is e2e/test_isolation.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from hodei.errors import ProviderError
from hodei.providers.cgroups import WorkerCgroups

MIB = 1024 * 1024


def test_cgroup_v2_with_controllers_limits_the_workers_own_group(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    groups = WorkerCgroups(tmp_path, "i1", {"memory": tmp_path / "v1-memory"})  # v2 is preferred
    procs = groups.create("w1", cpu_cores=0.5, memory_bytes=64 * MIB)
    worker = tmp_path / "hodei-i1" / "w1"
    assert procs == [worker / "cgroup.procs"]
    assert (worker / "memory.max").read_text() == str(64 * MIB)
    assert (worker / "cpu.max").read_text() == "50000 100000"
    # Enabled for the workers (a file here; the kernel's file adds what is written).
    assert (tmp_path / "hodei-i1" / "cgroup.subtree_control").read_text() in ("+memory", "+cpu")
    assert not (tmp_path / "v1-memory").exists()
    assert groups.limits() == "--memory and --cpu enforced"


def test_a_hybrid_host_limits_in_the_v1_hierarchies_and_the_worker_enters_them_too(tmp_path: Path) -> None:
    unified, memory, cpu = (tmp_path / name for name in ("unified", "memory", "cpu"))
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("\n")
    groups = WorkerCgroups(unified, "i2", {"memory": memory, "cpu": cpu})
    procs = groups.create("w2", cpu_cores=0.001, memory_bytes=32 * MIB)
    assert procs == [
        unified / "hodei-i2/w2/cgroup.procs",
        memory / "hodei-i2/w2/cgroup.procs",
        cpu / "hodei-i2/w2/cgroup.procs",
    ]
    assert (memory / "hodei-i2/w2/memory.limit_in_bytes").read_text() == str(32 * MIB)
    assert (cpu / "hodei-i2/w2/cpu.cfs_quota_us").read_text() == "1000"  # the kernel's least quota
    assert (cpu / "hodei-i2/w2/cpu.cfs_period_us").read_text() == "100000"
    # A job without limits is in a memory group all the same (its agent reads its OOM kills
    # and peak there), with no limit; and in no cpu group.
    assert groups.create("w3") == [unified / "hodei-i2/w3/cgroup.procs", memory / "hodei-i2/w3/cgroup.procs"]
    assert not (memory / "hodei-i2/w3/memory.limit_in_bytes").exists()
    assert not (cpu / "hodei-i2/w3").exists()


@pytest.mark.parametrize(
    ("cpu", "memory", "refused"),
    [(0.5, 0, "--cpu"), (0, 64 * MIB, "--memory"), (1, 64 * MIB, "--memory and --cpu")],
)
def test_a_limit_no_controller_here_can_set_is_refused_before_anything_is_made(
    tmp_path: Path, cpu: float, memory: int, refused: str
) -> None:
    groups = WorkerCgroups(tmp_path, "i3")
    with pytest.raises(ProviderError, match=f"this host cannot enforce {refused} on local workers") as error:
        groups.create("w4", cpu_cores=cpu, memory_bytes=memory)
    assert not error.value.retryable
    assert not (tmp_path / "hodei-i3").exists()
    assert groups.limits() == "no --cpu/--memory limits"


def test_a_memory_group_that_cannot_be_made_costs_a_job_without_a_limit_nothing(tmp_path: Path) -> None:
    """Joining one without --memory is for the usage figures only; with --memory it is refused."""
    unified, memory = tmp_path / "unified", tmp_path / "memory"
    unified.mkdir()
    memory.write_text("")  # not a directory: no group can be made in it
    groups = WorkerCgroups(unified, "i4", {"memory": memory})
    assert groups.create("w5") == [unified / "hodei-i4/w5/cgroup.procs"]
    with pytest.raises(ProviderError, match="cannot set the memory limit of worker w6"):
        groups.create("w6", memory_bytes=64 * MIB)


def test_the_providers_limit_of_processes_is_each_workers_pids_max_in_either_hierarchy(tmp_path: Path) -> None:
    """HODEI_WORKER_MAX_PROCESSES: every worker's, whatever its job asks; where no pids
    controller is, jobs run all the same and the provider's health says there is none."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    groups = WorkerCgroups(v2, "i5", processes=512)
    assert groups.create("w7") == [v2 / "hodei-i5/w7/cgroup.procs"]
    assert (v2 / "hodei-i5/w7/pids.max").read_text() == "512"
    assert groups.limits() == "--memory and --cpu enforced, at most 512 processes a worker"

    unified, memory, pids = (tmp_path / name for name in ("unified", "memory", "pids"))
    unified.mkdir()
    hybrid = WorkerCgroups(unified, "i6", {"memory": memory, "pids": pids}, processes=64)
    assert hybrid.create("w8") == [
        unified / "hodei-i6/w8/cgroup.procs",
        memory / "hodei-i6/w8/cgroup.procs",
        pids / "hodei-i6/w8/cgroup.procs",
    ]
    assert (pids / "hodei-i6/w8/pids.max").read_text() == "64"
    assert hybrid.limits() == "--memory enforced, at most 64 processes a worker"

    unlimited = WorkerCgroups(unified, "i7", {"memory": memory, "pids": pids})
    unlimited.create("w9")
    assert not (pids / "hodei-i7").exists()  # no limit: no group
    nowhere = WorkerCgroups(tmp_path / "none", "i8", processes=64)
    assert nowhere.limits() == "no --cpu/--memory limits, no limit of processes (no pids controller)"
