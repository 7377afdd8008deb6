"""The Docker engine works the way Hodei uses it: host network, output read back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest


@pytest.mark.docker
def test_a_container_on_the_host_network_runs_and_its_output_is_read(docker_client: object, worker_image: str) -> None:
    name = f"hodei-test-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.run(  # type: ignore[attr-defined]
        worker_image,
        ["echo hello-from-$(hostname)"],
        entrypoint=["/bin/sh", "-c"],
        name=name,
        network_mode="host",
        detach=True,
        labels={"hodei.test": "engine"},
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        output = container.logs().decode()
        assert output.startswith("hello-from-")
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    finally:
        container.remove(force=True)


def test_without_an_engine_docker_tests_skip_with_a_reason() -> None:
    """The skip path itself: pointed at a socket where no engine listens."""
    script = textwrap.dedent(
        """
        import os, pytest
        os.environ["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
        os.environ.pop("HODEI_REQUIRE_DOCKER", None)
        from hodei.testing import docker_client_or_skip
        try:
            docker_client_or_skip()
        except pytest.skip.Exception as exc:
            print("SKIPPED:", exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "SKIPPED: no Docker engine reachable" in result.stdout, result.stderr
