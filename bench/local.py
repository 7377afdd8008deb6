"""``just bench-local``: latency of an `echo` job on the local provider, next to the
floor measured in the same run: spawning the worker's interpreter, importing the
agent and making its first gRPC call. The provider itself forks its agents from a
template (``hodei.providers.agent_template``); that start is printed too, as a second
floor.

Goal: p50 <= 2x the floor.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import database, percentile, process_cpu, row
from bench.jobs import job_latencies, print_latency_table
from hodei.providers.agent_template import AgentTemplate, agent_python
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


class _FirstCalls(grpc.GenericRpcHandler):
    """A gRPC server that notes when each call arrives and refuses it."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, None]:
        return grpc.unary_unary_rpc_method_handler(self._refuse)

    def _refuse(self, request: bytes, context: grpc.ServicerContext) -> None:
        self.arrivals.append(time.perf_counter())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "the benchmark refuses every worker")


@dataclass(frozen=True)
class ForkedStarts:
    # Fork request -> the first RPC's arrival, seconds.
    samples: list[float]
    # CPU seconds a forked agent used, fork to exit.
    cpu_each: float


def forked_floor(runs: int = FLOOR_RUNS) -> ForkedStarts:
    """An agent forked as the local provider forks it, to the arrival of its first RPC at
    a server (which refuses it: the agent then exits, 3)."""
    calls = _FirstCalls()
    server = grpc.server(ThreadPoolExecutor(2), handlers=[calls])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    template = AgentTemplate.of_this_python({"PATH": "/usr/bin:/bin"})
    samples = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(runs + 1):
                settings = {
                    **template.env,
                    "HODEI_SERVER_ADDRESS": f"127.0.0.1:{port}",
                    "HODEI_WORKER_ID": str(uuid.uuid4()),
                    "HODEI_JOB_ID": str(uuid.uuid4()),
                    "HODEI_WORKER_TOKEN": "not-a-token",
                }
                started = time.perf_counter()
                code = template.fork(f"floor-{run}", settings, Path(tmp) / f"{run}.log", []).wait(timeout=30)
                if code != 3 or len(calls.arrivals) != run + 1:
                    raise RuntimeError(f"the forked agent exited {code}: {(Path(tmp) / f'{run}.log').read_text()}")
                samples.append(calls.arrivals[-1] - started)
            pid = template.pid
            assert pid is not None
            cpu = process_cpu(pid, children=True)
    finally:
        template.close()
        server.stop(None)
    # The first fork also starts the template.
    return ForkedStarts(samples[1:], cpu / (runs + 1))


def main() -> None:
    with (
        database() as url,
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(url, Path(tmp), {"HODEI_DOCKER_ENABLED": "0"}) as server,
    ):
        bare = floor(server.address)
        forked = forked_floor()
        jobs = job_latencies(server.address, "local", JOBS)
    print_latency_table("local", "spawn agent + first gRPC call", bare, jobs, "<= 2.0")
    base, job = percentile(forked.samples, 50), percentile(jobs, 50)
    print(row("floor: fork agent -> its first gRPC call p50", f"{base * 1000:.0f} ms", "(baseline)"))
    print(row("  a forked agent's CPU, fork to exit", f"{forked.cpu_each * 1000:.0f} ms"))
    print(row("echo job p50 / the forked floor", f"{job * 1000:.0f} ms", f"{base * 1000:.0f} ms", f"{job / base:.2f}"))


if __name__ == "__main__":
    main()
