"""``just bench-follow``: what open log streams and big logs cost the rest of the API.

1. QueueJob latency (p50, p99) alone (before and after), and with 500 `logs --follow`
   streams open on a running job: followers are tasks, not threads, and idle ones cost a
   stat() now and then, so submissions should not slow.
2. The server's memory around reading a job log of a million lines (GetLogs pages, and a
   whole non-follow stream of it): it reads a page at a time.
3. Its last 100 lines (`job logs --tail 100`, the console's job page) against its first 100:
   a tail is read from the log's last batches, not counted from its first line.

Goal: QueueJob p99 with 500 followers no worse than without (ratio <= 1.0); RSS growth < 50 MB;
a tail within 2x a first page.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from bench.common import database, header, percentile, row
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc, logs_pb2, logs_pb2_grpc
from hodei.testing import ServerProcess, eventually, query, wait_terminal

FOLLOWERS = 500
SUBMISSIONS = 300
LINES = 1_000_000


def submissions(stub: jobs_pb2_grpc.JobExecutionServiceStub) -> list[float]:
    """QueueJob round trips of jobs that wait in the queue (the one slot is taken)."""
    samples = []
    spec = common_pb2.JobSpec(name="bench-queue", command="true", timeout_seconds=60, provider="local")
    for _ in range(SUBMISSIONS):
        started = time.perf_counter()
        stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec), timeout=60)
        samples.append(time.perf_counter() - started)
    return samples


@contextlib.contextmanager
def followers(address: str, job_id: str) -> Iterator[None]:
    """FOLLOWERS open streams, held by another process as other people's terminals would
    be: the submitting client does not pay for them."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.follow", "--followers", address, job_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        if child.stdout.readline().strip() != "open":
            raise RuntimeError(f"the followers' process failed (exit {child.wait()})")
        yield
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def hold_followers(address: str, job_id: str) -> None:
    """The followers' process: opens the streams, says so, holds them until stdin closes."""
    with grpc.insecure_channel(address) as channel:
        logs = logs_pb2_grpc.LogStreamServiceStub(channel)
        streams = []
        for _ in range(FOLLOWERS):
            stream = logs.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=job_id, follow=True))
            next(stream)  # the stream is open and served
            streams.append(stream)
        print("open", flush=True)
        sys.stdin.read()
        for stream in streams:
            stream.cancel()


def status_of(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_job(stub: jobs_pb2_grpc.JobExecutionServiceStub, command: str) -> str:
    spec = common_pb2.JobSpec(name="bench-follow", command=command, timeout_seconds=600, provider="local")
    return str(stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec), timeout=60).job_id)


def main() -> None:
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        env = {"HODEI_DOCKER_ENABLED": "0", "HODEI_LOCAL_MAX_WORKERS": "1"}
        with ServerProcess(url, Path(tmp), env) as server:
            assert server.process is not None
            pid = server.process.pid
            channel = grpc.insecure_channel(server.address)
            jobs = jobs_pb2_grpc.JobExecutionServiceStub(channel)
            logs = logs_pb2_grpc.LogStreamServiceStub(channel)
            followed = run_job(jobs, "echo started; sleep 600")
            eventually(lambda: query(url, "SELECT state FROM jobs WHERE id = %s", (followed,)) == [("RUNNING",)], 60)
            alone = submissions(jobs)
            threads_before = status_of(pid, "Threads")
            with followers(server.address, followed):
                threads_with = status_of(pid, "Threads")
                crowded = submissions(jobs)
            # Alone again: the queue is longer now than in either run before, so the
            # followers' cost is not confused with the queue's growth.
            alone += submissions(jobs)
            # The queued submissions and the followed job go; a job of a million lines runs.
            for (queued,) in query(url, "SELECT id::text FROM jobs WHERE state IN ('PENDING', 'RUNNING')"):
                with contextlib.suppress(grpc.RpcError):  # one may have run meanwhile (a slot freed)
                    jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=queued), timeout=30)
            big = run_job(jobs, f"seq 1 {LINES}")
            wait_terminal(url, big, 600)
            stored = eventually(
                lambda: query(url, "SELECT size_bytes FROM job_log_files WHERE job_id = %s", (big,)), 60
            )
            output = sum(len(str(number)) + 1 for number in range(1, LINES + 1))
            rss_before = status_of(pid, "VmRSS")
            page = logs.GetLogs(logs_pb2.GetLogsRequest(job_id=big), timeout=120)
            largest = logs.GetLogs(logs_pb2.GetLogsRequest(job_id=big, limit=100_000), timeout=120)
            streamed = sum(
                len(batch.entries)
                for batch in logs.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=big), timeout=600)
            )
            rss_after = status_of(pid, "VmRSS")
            heads: list[float] = []
            tails: list[float] = []
            for _ in range(11):  # alternated: the machine's drift falls on both
                head = logs_pb2.GetLogsRequest(job_id=big, limit=100)
                tail = logs_pb2.GetLogsRequest(job_id=big, limit=100, tail=100)
                for request, samples in ((head, heads), (tail, tails)):
                    started = time.perf_counter()
                    logs.GetLogs(request, timeout=120)
                    samples.append(time.perf_counter() - started)
            channel.close()
    p99_alone, p99_crowded = percentile(alone, 99), percentile(crowded, 99)
    print(header())
    print(row("QueueJob p50, alone", f"{percentile(alone, 50) * 1000:.1f} ms", "(baseline)"))
    print(row("QueueJob p99, alone", f"{p99_alone * 1000:.1f} ms", "(baseline)"))
    print(
        row(
            f"QueueJob p50, {FOLLOWERS} followers open",
            f"{percentile(crowded, 50) * 1000:.1f} ms",
            f"{percentile(alone, 50) * 1000:.1f} ms",
            f"{percentile(crowded, 50) / percentile(alone, 50):.2f}",
        )
    )
    print(
        row(
            f"QueueJob p99, {FOLLOWERS} followers open",
            f"{p99_crowded * 1000:.1f} ms",
            f"{p99_alone * 1000:.1f} ms",
            f"{p99_crowded / p99_alone:.2f}",
            "<= 1.0",
        )
    )
    print(row("server threads, followers open", str(threads_with), f"{threads_before} before"))
    print(
        row(
            f"RSS growth reading {LINES:,} lines",
            f"{(rss_after - rss_before) / 1024:.1f} MB",
            f"{rss_before / 1024:.0f} MB before",
            "",
            "< 50 MB",
        )
    )
    print(
        row(
            f"stored log / output, {LINES:,} short lines",
            f"{stored[0][0] / 1e6:.1f} MB",
            f"{output / 1e6:.1f} MB",
            f"{stored[0][0] / output:.2f}",
            "<= 1.5",
        )
    )
    print(
        row(
            f"last 100 of {LINES:,} lines (--tail 100)",
            f"{percentile(tails, 50) * 1000:.1f} ms",
            f"{percentile(heads, 50) * 1000:.1f} ms first 100",
            f"{percentile(tails, 50) / percentile(heads, 50):.2f}",
            "<= 2.0",
        )
    )
    print(f"(pages of {len(page.entries)} and {len(largest.entries)} entries; {streamed:,} streamed)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--followers"]:
        hold_followers(sys.argv[2], sys.argv[3])
    else:
        main()
