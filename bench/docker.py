"""``just bench-docker``: latency of an `echo` job on Docker, next to the floor measured
in the same run: `docker run --rm --network host hodei-jobs-worker:latest` starting the
agent's interpreter and importing its modules.

Goal: p50 <= 1.5x the floor.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import database
from bench.jobs import job_latencies, print_latency_table
from hodei.testing import ServerProcess

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
    print_latency_table("docker", "docker run --rm of the agent image", bare, jobs, "<= 1.5")


if __name__ == "__main__":
    main()
