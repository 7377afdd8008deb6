"""``just bench-docker``: latency of an `echo` job on Docker, next to the floor measured
in the same run: `docker run --rm --network host hodei-jobs-worker:latest` starting the
agent's interpreter and importing its modules. Then the same job in an image of its own
(`--image`: busybox alone, the agent brought in from its volume) against the worker image's.

Goal: p50 <= 1.5x the floor.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from bench.common import database, percentile, row
from bench.jobs import job_latencies, print_latency_table
from hodei.testing import ServerProcess, build_bare_image

IMAGE = "hodei-jobs-worker:latest"
JOBS = 20
FLOOR_RUNS = 10


def floor() -> list[float]:
    docker = shutil.which("docker") or "/usr/bin/docker"
    command = [
        docker,
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "python3",
        IMAGE,
        "-c",
        "import hodei_worker.agent",
    ]
    samples = []
    for _ in range(FLOOR_RUNS + 1):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples[1:]


def main() -> None:
    with (
        database() as url,
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(url, Path(tmp), {"HODEI_DOCKER_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0"}) as server,
    ):
        bare = floor()
        jobs = job_latencies(server.address, "docker", JOBS)
        image = build_bare_image(docker.from_env(), IMAGE)
        own = job_latencies(server.address, "docker", JOBS, image=image)
    print_latency_table("docker", "docker run --rm of the agent image", bare, jobs, "<= 1.5")
    mine, theirs = percentile(own, 50), percentile(jobs, 50)
    print(
        row(
            f"echo job in its own image (--image, busybox) p50 ({len(own)})",
            f"{mine * 1000:.0f} ms",
            f"{theirs * 1000:.0f} ms worker image",
            f"{mine / theirs:.2f}",
        )
    )


if __name__ == "__main__":
    main()
