"""Job latency: submit an `echo` job and wait for SUCCEEDED, through the real server."""

from __future__ import annotations

import time

import grpc

from bench.common import header, percentile, row
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc


def job_latencies(address: str, provider: str, count: int, warmup: int = 2, image: str = "") -> list[float]:
    """Seconds from QueueJob to the job's SUCCEEDED, one job at a time (in ``image``: its own)."""
    channel = grpc.insecure_channel(address)
    stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
    samples = []
    for index in range(warmup + count):
        spec = common_pb2.JobSpec(
            name=f"bench-{index}", command="echo hi", timeout_seconds=30, provider=provider, image=image
        )
        started = time.perf_counter()
        job_id = stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec)).job_id
        for update in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id)):
            if update.job.state == "SUCCEEDED":
                break
            if update.job.state in ("FAILED", "CANCELLED", "TIMEOUT"):
                raise RuntimeError(f"bench job {job_id} ended {update.job.state}: {update.job.error_message}")
        if index >= warmup:
            samples.append(time.perf_counter() - started)
    channel.close()
    return samples


def print_latency_table(provider: str, floor_name: str, floor: list[float], jobs: list[float], goal: str) -> None:
    """The rows both provider benches print: the floor, then p50 and p95 as ratios to it."""
    base = percentile(floor, 50)
    print(header())
    print(row(f"floor: {floor_name} p50", f"{base * 1000:.0f} ms", "(baseline)"))
    for q, q_goal in ((50, goal), (95, "")):
        value = percentile(jobs, q)
        print(
            row(
                f"echo job, {provider}, submit->SUCCEEDED p{q} ({len(jobs)})",
                f"{value * 1000:.0f} ms",
                f"{base * 1000:.0f} ms",
                f"{value / base:.2f}",
                q_goal,
            )
        )
