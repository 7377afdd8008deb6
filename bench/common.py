"""What every benchmark needs: a throwaway PostgreSQL cluster (default durability, as
in production), a migrated database, and percentile helpers. Each benchmark prints
its figures next to a baseline measured in the same run, as a ratio."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hodei.devdb import Cluster, create_database, free_port
from hodei.domain.provider import ProviderType
from hodei.providers.registry import register_providers
from hodei.store.app import HodeiStore
from hodei.store.db import open_pool
from hodei.store.migrations import migrate

# Database URL -> the pid of its cluster's postmaster, for the clusters ``database`` started.
_POSTMASTERS: dict[str, int] = {}


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A migrated database: on HODEI_BENCH_DATABASE_URL's server, or a throwaway cluster."""
    given = os.environ.get("HODEI_BENCH_DATABASE_URL")
    if given:
        yield _prepare(given, given)
        return
    root = Path(tempfile.mkdtemp(prefix="hodei-bench-"))
    cluster = Cluster(root, free_port())
    cluster.init()
    # pg_stat_statements (PostgreSQL's contrib) lets a benchmark count statements per job.
    cluster.start("-c shared_preload_libraries=pg_stat_statements")
    url = cluster.database_url("hodei_bench")
    _POSTMASTERS[url] = int((cluster.data / "postmaster.pid").read_text().split()[0])
    try:
        yield _prepare(cluster.url, url)
    finally:
        del _POSTMASTERS[url]
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _prepare(server: str, url: str) -> str:
    name = url.rsplit("/", 1)[1]
    create_database(server, name)
    migrate(url)
    pool = open_pool(url, max_size=2)
    try:
        register_providers(HodeiStore(pool), [ProviderType.DOCKER, ProviderType.KUBERNETES, ProviderType.LOCAL])
    finally:
        pool.close()
    return url


def process_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system) a process has used so far, or with ``children`` those
    its ended (and reaped) children used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def database_cpu(url: str) -> float | None:
    """CPU seconds PostgreSQL has spent so far for ``url``'s cluster: its postmaster, its
    live processes and those that ended (reaped by the postmaster). None for a server
    given by HODEI_BENCH_DATABASE_URL, which may not even run on this machine. A job's
    cost on a machine is its platform's CPU and its database's, on the same cores."""
    postmaster = _POSTMASTERS.get(url)
    if postmaster is None:
        return None
    total = process_cpu(postmaster) + process_cpu(postmaster, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                total += process_cpu(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # ended meanwhile: counted with the reaped ones from now on
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def row(name: str, value: str, baseline: str = "", ratio: str = "", goal: str = "") -> str:
    return f"{name:<44} {value:>16} {baseline:>18} {ratio:>10}  {goal}"


def header() -> str:
    return row("measurement", "value", "baseline", "ratio", "goal")
