"""``just bench-local``: latency of an `echo` job on the local provider, next to the
floor measured in the same run: spawning the worker's interpreter, importing the
agent and making its first gRPC call.

Goal: p50 <= 2x the floor.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import database
from bench.jobs import job_latencies, print_latency_table
from hodei.providers.local import agent_python
from hodei.testing import ServerProcess

JOBS = 30
FLOOR_RUNS = 15

FLOOR_SCRIPT = """
import sys, grpc
import hodei_worker.agent
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
"""


def floor(address: str) -> list[float]:
    """The agent started as the local provider starts it (``agent_python``)."""
    python, env = agent_python()
    samples = []
    for _ in range(FLOOR_RUNS + 1):
        started = time.perf_counter()
        subprocess.run([*python, "-c", FLOOR_SCRIPT, address], check=True, env={**os.environ, **env})
        samples.append(time.perf_counter() - started)
    return samples[1:]


def main() -> None:
    with (
        database() as url,
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(url, Path(tmp), {"HODEI_DOCKER_ENABLED": "0"}) as server,
    ):
        bare = floor(server.address)
        jobs = job_latencies(server.address, "local", JOBS)
    print_latency_table("local", "spawn agent + first gRPC call", bare, jobs, "<= 2.0")


if __name__ == "__main__":
    main()
