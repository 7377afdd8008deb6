"""Fixtures shared by tests/ and e2e/: a real PostgreSQL, a real Docker engine, real
server processes.

PostgreSQL: a throwaway cluster from the installed binaries (or the server named by
HODEI_TEST_DATABASE_URL); migrations run once into a template database, and each test
module (or test, with ``fresh_database_url``) gets a copy of it.

Docker: tests marked ``docker`` skip with the reason when no engine answers, unless
HODEI_REQUIRE_DOCKER=1 (CI), where a missing engine is a failure.
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hodei.devdb import FAST_OPTIONS, Cluster, create_database, free_port
from hodei.domain.provider import ProviderType
from hodei.providers.registry import register_providers
from hodei.store.app import HodeiStore
from hodei.store.db import open_pool
from hodei.store.migrations import migrate
from hodei.testing import build_bare_image, docker_client_or_skip

# Tests must not pick up a developer's configuration.
for _name in list(os.environ):
    if _name.startswith("HODEI_") and _name not in {"HODEI_TEST_DATABASE_URL", "HODEI_REQUIRE_DOCKER"}:
        del os.environ[_name]

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of a PostgreSQL server (its `postgres` database) the tests may create databases on."""
    given = os.environ.get("HODEI_TEST_DATABASE_URL")
    if given:
        yield given
        return
    root = Path(tempfile.mkdtemp(prefix="hodei-pg-"))
    cluster = Cluster(root, free_port())
    cluster.init()
    cluster.start(FAST_OPTIONS)
    try:
        yield cluster.url
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _database_url(server: str, name: str) -> str:
    base, _, _ = server.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def template_database(pg_server: str) -> str:
    name = f"hodei_template_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    create_database(pg_server, name)
    url = _database_url(pg_server, name)
    migrate(url)
    pool = open_pool(url, max_size=2)
    try:
        register_providers(HodeiStore(pool), [ProviderType.DOCKER, ProviderType.KUBERNETES])
    finally:
        pool.close()
    return name


def new_database(pg_server: str, template: str) -> str:
    """A copy of the migrated template with identities of its own: servers of two test
    databases are two installations, and must not take each other's workers for strays."""
    name = f"hodei_test_{os.getpid()}_{next(_counter)}"
    create_database(pg_server, name, template=template)
    url = _database_url(pg_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "UPDATE hodei.secrets SET value = gen_random_uuid()::text WHERE name = 'installation_id' RETURNING value"
        ).fetchone()
        conn.execute(
            "UPDATE hodei.secrets SET value = encode(sha256((gen_random_uuid()::text || gen_random_uuid()::text)"
            "::bytea), 'hex') WHERE name = 'worker_token_key'"
        )
    assert row is not None
    INSTALLATIONS.add(str(row[0]))
    return url


# Installations the tests made: whatever workers of theirs are left at the end are removed.
INSTALLATIONS: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def _leave_no_workers_behind() -> Iterator[None]:
    """Servers stopped mid-job leave their workers running (by design: a restart picks
    them up). At the end of the session, every container and local worker cgroup of a
    test installation goes."""
    yield
    remove_test_workers(INSTALLATIONS)


def remove_test_workers(installations: set[str]) -> None:
    from hodei_worker.runner import home_name

    from hodei.providers.cgroups import WorkerCgroups, cgroup1_roots, cgroup2_root

    root = cgroup2_root()
    for installation in installations:
        if root is not None:
            groups = WorkerCgroups(root, installation, cgroup1_roots())  # its cgroup v1 groups too
            for worker_id in groups.workers():
                groups.kill(worker_id)
                # Its job's home, which its agent, killed, did not remove (nor a provider: its server is gone).
                shutil.rmtree(Path(tempfile.gettempdir()) / home_name(worker_id), ignore_errors=True)
            groups.forget_if_empty()
    try:
        import docker

        client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=30)
        for container in client.containers.list(all=True, filters={"label": "hodei.managed"}):
            if container.labels.get("hodei.installation") in installations:
                container.remove(force=True)
        client.close()
    except Exception as exc:  # no engine: nothing of ours runs in one
        print(f"no Docker cleanup: {exc}")
    # The Docker SDK leaves the socket of a connection refused unclosed: let it go quietly
    # here rather than as a ResourceWarning that fails the session when no engine runs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def database_url(pg_server: str, template_database: str) -> str:
    """A migrated database shared by the tests of one module."""
    return new_database(pg_server, template_database)


@pytest.fixture
def fresh_database_url(pg_server: str, template_database: str) -> str:
    """A migrated database for this test alone."""
    return new_database(pg_server, template_database)


@pytest.fixture
def pool(fresh_database_url: str) -> Iterator[object]:
    pool = open_pool(fresh_database_url, max_size=10)
    yield pool
    pool.close()


@pytest.fixture
def store(pool: object) -> HodeiStore:
    return HodeiStore(pool)  # type: ignore[arg-type]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory jobs may write to: local jobs run as `nobody`, not as the test's user.
    Outside pytest's own temporary root: every pytest session of the same user that
    starts makes that root private again (0700), and jobs of a running test would lose
    their way to it (their writes fail, the test with them)."""
    path = Path(tempfile.mkdtemp(prefix="hodei-shared-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client() -> object:
    return docker_client_or_skip()


@pytest.fixture(scope="session")
def worker_image(docker_client: object) -> str:
    """hodei-jobs-worker:latest, rebuilt from this checkout (the base is cached)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_image", Path(__file__).parent / "workers" / "build_image.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.build(None, docker_client))


@pytest.fixture(scope="session")
def bare_image(docker_client: Any, worker_image: str) -> str:
    return build_bare_image(docker_client, worker_image)
