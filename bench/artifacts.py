"""``just bench-artifacts``: what keeping a job's file costs, and fetching it into the job
after it, next to the floor measured in the same run on the same disk: copying the file
and computing its SHA-256 (the least a store that checks what it keeps must do).

A job writes SIZE bytes; the same job with ``--artifact`` takes longer by the upload
(the agent reads the file, the server writes it and hashes it). A job after it with
``--fetch-artifacts`` takes longer than one without by the fetch. A job given a file of
SIZE random bytes with ``--input`` takes longer than one without by packing it (tar), uploading
it, and its worker's fetch, check and unpacking
(then a copy as the job's user, the local provider's nobody). Every extra time is a median
of RUNS, local provider.

Goal: each <= 3x the floor (the file crosses from one process to another over gRPC, on the
same two cores, where the floor copies it within one).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import database, header, percentile, row
from hodei._proto import artifacts_pb2_grpc, common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.cli.inputs import pack, pieces
from hodei.testing import ServerProcess

SIZE = 256 * 1024 * 1024
RUNS = 5
# Enough for every file the runs write and keep (see prime).
PRIMED = (2 * RUNS + 4) * SIZE
WRITE = f"head -c {SIZE} /dev/zero > data.bin"


def floor(directory: Path) -> list[float]:
    """Copy a SIZE-byte file and hash the copy, as the server does with an upload."""
    source = directory / "source.bin"
    with source.open("wb") as handle:  # written, not sparse: as the job writes it
        for _ in range(SIZE >> 20):
            handle.write(bytes(1 << 20))
    samples = []
    for run in range(RUNS):
        started = time.perf_counter()
        copy = directory / f"copy-{run}.bin"
        shutil.copyfile(source, copy)
        digest = hashlib.sha256()
        with copy.open("rb") as handle:
            while piece := handle.read(1 << 20):
                digest.update(piece)
        samples.append(time.perf_counter() - started)
        copy.unlink()
    return samples


def prime(directory: Path) -> None:
    """Writes and removes PRIMED bytes: the pages the runs' files will take in memory are then
    ones the machine has used before. On our VMs a write into memory never used since boot
    is ten times slower (the hypervisor backs each page at its first touch: 256 MiB 0.55 s,
    against 0.06 s into pages freed a moment before); the floor, copying into the pages its
    previous copy freed, never paid that, and a fetch (256 MiB more held each round, beside
    the kept copy) did: 1.0 s fetched where the same fetch again took 0.45 s."""
    primed = directory / "primed.bin"
    with primed.open("wb") as handle:
        for _ in range(PRIMED >> 20):
            handle.write(bytes(1 << 20))
    primed.unlink()


def run(stub: jobs_pb2_grpc.JobExecutionServiceStub, spec: common_pb2.JobSpec) -> tuple[str, float]:
    """Submits the job and waits for SUCCEEDED: its id and the seconds it took."""
    started = time.perf_counter()
    job_id = stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec)).job_id
    for update in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id)):
        if update.job.state == "SUCCEEDED":
            return job_id, time.perf_counter() - started
        if update.job.state in ("FAILED", "CANCELLED", "TIMEOUT"):
            raise RuntimeError(f"bench job {job_id} ended {update.job.state}: {update.job.error_message}")
    raise RuntimeError(f"bench job {job_id}: its watch ended before it did")


def main() -> None:
    def spec(command: str, **fields: object) -> common_pb2.JobSpec:
        return common_pb2.JobSpec(name="bench", command=command, timeout_seconds=120, provider="local", **fields)  # type: ignore[arg-type]

    limits = {"HODEI_MAX_INPUT_BYTES": str(2 * SIZE)}  # its archive: the file and tar's headers
    with (
        database() as url,
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(url, Path(tmp) / "logs", limits) as server,
    ):
        prime(Path(tmp))
        base = floor(Path(tmp))
        channel = grpc.insecure_channel(server.address)
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        run(stub, spec(WRITE, artifacts=["data.bin"]))  # warm-up
        plain, keeping, after, fetching = [], [], [], []
        for _ in range(RUNS):
            plain.append(run(stub, spec(WRITE))[1])
            kept, seconds = run(stub, spec(WRITE, artifacts=["data.bin"]))
            keeping.append(seconds)
            after.append(run(stub, spec("true", after={kept: "ok"}))[1])
            fetching.append(run(stub, spec("true", after={kept: "ok"}, fetch_artifacts=True))[1])
        given = Path(tmp) / "given.bin"
        given.write_bytes(os.urandom(SIZE))
        plain_again, starting = [], []
        artifacts = artifacts_pb2_grpc.ArtifactServiceStub(channel)
        for _ in range(RUNS):
            plain_again.append(run(stub, spec("true"))[1])
            started = time.perf_counter()
            packed = pack([str(given)])
            with packed.archive:
                artifacts.UploadInput(pieces(packed))
            sent = spec("test -f given.bin", input_sha256=packed.sha256, input_bytes=packed.size)
            starting.append(time.perf_counter() - started + run(stub, sent)[1])
        channel.close()
    floor_s = percentile(base, 50)
    upload = percentile(keeping, 50) - percentile(plain, 50)
    fetch = percentile(fetching, 50) - percentile(after, 50)
    mib = SIZE / 2**20
    print(header())
    print(row(f"floor: copy + SHA-256 of {mib:.0f} MiB p50", f"{floor_s * 1000:.0f} ms", "(baseline)"))
    start = percentile(starting, 50) - percentile(plain_again, 50)
    for name, extra, goal in (
        ("keep it (--artifact)", upload, "<= 3.0"),
        ("fetch it (--fetch-artifacts)", fetch, "<= 3.0"),
        ("start with it (--input)", start, ""),  # no goal set: packed, sent, fetched, unpacked, copied
    ):
        speed = f"{extra * 1000:.0f} ms ({mib / extra:.0f} MiB/s)"
        ratio = f"{extra / floor_s:.2f}"
        print(row(f"{name}: extra p50 ({RUNS})", speed, f"{floor_s * 1000:.0f} ms", ratio, goal))


if __name__ == "__main__":
    main()
