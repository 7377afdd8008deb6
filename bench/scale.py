"""The rest of #13's figures, printed by ``just bench-throughput`` after the job rates:
a connected fleet of sim workers, one job's million lines, and replay of the log the run
has written (topped up to a size), each beside a baseline measured in the same run."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import grpc
import psycopg

from bench.common import process_cpu, row
from bench.store import log_replay_rate
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc, logs_pb2, logs_pb2_grpc
from hodei.store import replay
from hodei.store.app import HodeiStore
from hodei.store.db import open_pool
from hodei.store.events import MOVES_TYPES
from hodei.testing import ServerProcess, query, wait_settled

# Seconds over which the connected fleet's cost is measured.
FLEET_WINDOW = 20.0


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def _submit(address: str, spec: common_pb2.JobSpec, count: int) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        return [stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec)).job_id for _ in range(count)]


@dataclass(frozen=True)
class Fleet:
    workers: int
    failed: int
    rss_mb: float
    threads: int
    idle_rss_mb: float
    idle_threads: int
    core_share: float
    # The same server's before any job: its sweeps, relay and pool upkeep, which the
    # heartbeats' cost is over.
    idle_core_share: float
    # The fleet process's (the simulated workers' own side of each heartbeat).
    fleet_share: float


def fleet_run(url: str, count: int) -> Fleet:
    """``count`` sim jobs that run for an hour: once every worker is connected (RUNNING),
    the server's RSS, threads and CPU over a quiet window, where all it does is take
    heartbeats (at the pace the server gives them) and sweep. The baseline is the same server idle."""
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_SIM_MAX_WORKERS": str(count)}
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(url, Path(tmp), env) as server:
        assert server.process is not None
        pid = server.process.pid
        idle = _status(pid)
        idle_share = _core_share(pid)
        spec = common_pb2.JobSpec(
            name="fleet", command="true", timeout_seconds=7200, provider="sim", env={"HODEI_SIM_SECONDS": "3600"}
        )
        ids = _submit(server.address, spec, count)
        deadline = time.monotonic() + 60 + count
        while True:
            ((running, failed),) = query(
                url,
                "SELECT count(*) FILTER (WHERE state = 'RUNNING'), "
                "count(*) FILTER (WHERE state NOT IN ('PENDING', 'ASSIGNED', 'RUNNING')) "
                "FROM jobs WHERE id = ANY(%s::uuid[])",
                (ids,),
            )
            if running + failed == count or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(2)  # the last registrations' sagas settle
        fleet = server.sim_fleet()
        assert fleet is not None
        fleet_before = process_cpu(fleet)
        share = _core_share(pid)
        fleet_share = (process_cpu(fleet) - fleet_before) / FLEET_WINDOW
        loaded = _status(pid)
    return Fleet(
        running,
        failed,
        int(loaded["VmRSS"].split()[0]) / 1024,
        int(loaded["Threads"]),
        int(idle["VmRSS"].split()[0]) / 1024,
        int(idle["Threads"]),
        share,
        idle_share,
        fleet_share,
    )


def _core_share(pid: int) -> float:
    """The share of a core the process used over the next FLEET_WINDOW seconds."""
    before = process_cpu(pid)
    time.sleep(FLEET_WINDOW)
    return (process_cpu(pid) - before) / FLEET_WINDOW


def print_fleet(fleet: Fleet, count: int) -> None:
    print(row(f"sim fleet: workers connected ({count} jobs)", f"{fleet.workers}", "", "", f"{count}, none failed"))
    print(row("sim fleet: jobs failed before connecting", f"{fleet.failed}", "", "", "0"))
    idle, ratio = f"{fleet.idle_rss_mb:.0f} MB idle", f"{fleet.rss_mb / fleet.idle_rss_mb:.2f}"
    print(row("sim fleet: server RSS", f"{fleet.rss_mb:.0f} MB", idle, ratio, "<= 250 MB"))
    print(row("sim fleet: server threads", f"{fleet.threads}", f"{fleet.idle_threads} idle", "", "<= 64"))
    connected, idle = f"{fleet.core_share * 100:.1f}% of a core", f"{fleet.idle_core_share * 100:.1f}% idle"
    print(row("sim fleet: server CPU while connected", connected, idle, "", "<= 5%"))
    beats = f"{(fleet.core_share - fleet.idle_core_share) * 100:.1f}% of a core"
    print(row("  of which the heartbeats' (connected - idle)", beats))
    print(row("sim fleet: the simulated workers' own CPU", f"{fleet.fleet_share * 100:.1f}% of a core"))


LINES = 1_000_000


def pipe_rate() -> float:
    """Baseline: lines/s of the same `seq` read line by line through a pipe by Python."""
    started = time.perf_counter()
    with subprocess.Popen(["seq", "1", str(LINES)], stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        count = sum(1 for _ in child.stdout)
    assert count == LINES
    return LINES / (time.perf_counter() - started)


def log_rate(address: str, url: str) -> float:
    """One local job printing a million short lines: lines/s from submit to SUCCEEDED, with
    every line stored in order (checked by reading the log back)."""
    spec = common_pb2.JobSpec(name="lines", command=f"seq 1 {LINES}", timeout_seconds=600, provider="local")
    started = time.time()
    (job_id,) = _submit(address, spec, 1)
    wait_settled(url, job_id, 600)
    ((state, completed_at),) = query(
        url, "SELECT state, extract(epoch FROM completed_at) FROM jobs WHERE id = %s", (job_id,)
    )
    if state != "SUCCEEDED":
        raise RuntimeError(f"the {LINES}-line job ended {state}")
    seconds = float(completed_at) - started
    expected, token = 1, ""
    with grpc.insecure_channel(address) as channel:
        stub = logs_pb2_grpc.LogStreamServiceStub(channel)
        while True:
            page = stub.GetLogs(logs_pb2.GetLogsRequest(job_id=job_id, limit=100_000, page_token=token))
            for entry in page.entries:
                if entry.line != str(expected):
                    raise RuntimeError(f"line {expected} of the stored log is {entry.line!r}")
                expected += 1
            if not page.has_more:
                break
            token = page.next_page_token
    if expected != LINES + 1:
        raise RuntimeError(f"{expected - 1} of {LINES} lines stored")
    return LINES / seconds


def print_logs(rate: float, baseline: float) -> None:
    print(row("pipe: `seq` read line by line (Python)", f"{baseline:,.0f} lines/s", "(baseline)"))
    print(
        row(
            f"one local job printing {LINES:,} lines, end to end",
            f"{rate:,.0f} lines/s",
            f"{baseline:,.0f} lines/s",
            f"{rate / baseline:.2f}",
            ">= 250,000 lines/s",
        )
    )


@dataclass(frozen=True)
class Replay:
    """Rates in events/s: a row of moves holds several events (``SagaMoved``, ``WorkerMoved``), and
    replay projects every one of them. Each way is timed ``repeats`` times (its figure is
    the median run's, printed with the runs' spread, as the bursts are)."""

    rows: int
    events: int
    rebuild_rates: list[float]
    apply_rates: list[float]
    verify_seconds: list[float]
    differences: int


# A UUID as text, the way ids appear in payloads and id columns.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _renamed(text: str, names: dict[str, str]) -> str:
    return _UUID.sub(lambda match: names.get(match.group(), match.group()), text)


# The events a row of domain_events holds (``hodei.store.events.unpack``).
EVENTS_IN_ROW = (
    f"CASE WHEN event_type IN ({', '.join(repr(t) for t in sorted(MOVES_TYPES))}) "
    "THEN jsonb_array_length(payload->'events') ELSE 1 END"
)


def _clone_jobs(url: str, size: int) -> None:
    """Tops the log up to ``size`` events (a row of a saga's moves holds several) with
    copies of the jobs the run has carried (their jobs', workers' and sagas' events, every
    id among them renamed per copy), so the log replayed has the mix of real operation,
    not a top-up of one event type."""
    events = query(
        url,
        "SELECT occurred_at, event_type, aggregate_id, correlation_id, actor, payload::text, aggregate_type, "
        f"aggregate_version, topic, {EVENTS_IN_ROW} FROM domain_events WHERE aggregate_type <> 'Provider' "
        "ORDER BY position",
    )
    ids = {event[2] for event in events}
    ((have,),) = query(url, f"SELECT coalesce(sum({EVENTS_IN_ROW}), 0) FROM domain_events")
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        while have < size:
            names = {old: str(uuid4()) for old in ids}
            copy = "COPY domain_events (id, occurred_at, event_type, aggregate_id, correlation_id, actor, payload, "
            with cur.copy(copy + "aggregate_type, aggregate_version, topic) FROM STDIN") as rows:
                for at, kind, aggregate, correlation, actor, payload, aggregate_type, version, topic, count in events:
                    if have >= size:
                        break
                    rows.write_row(
                        (
                            uuid4(),
                            at,
                            kind,
                            names[aggregate],
                            correlation and _renamed(correlation, names),
                            actor,
                            _renamed(payload, names),
                            aggregate_type,
                            version,
                            topic,
                        )
                    )
                    have += count


def replay_run(url: str, size: int, repeats: int) -> Replay:
    """The run's own log, topped up with copies of its jobs to ``size`` events, replayed
    the three ways an operator can, ``repeats`` times each: aggregates rebuilt in memory,
    read models rebuilt (``replay --apply``) and compared (``replay --verify``)."""
    _clone_jobs(url, size)
    pool = open_pool(url, max_size=4)
    rebuild_rates, apply_rates, verify_seconds, differences = [], [], [], 0
    try:
        for _ in range(repeats):
            events, rebuild_rate = log_replay_rate(HodeiStore(pool))
            rebuild_rates.append(rebuild_rate)
            started = time.perf_counter()
            replay.apply(pool)
            apply_rates.append(events / (time.perf_counter() - started))
            started = time.perf_counter()
            _, found = replay.verify(pool)
            verify_seconds.append(time.perf_counter() - started)
            differences = max(differences, len(found))
    finally:
        pool.close()
    ((rows,),) = query(url, "SELECT count(*) FROM domain_events")
    return Replay(rows, events, rebuild_rates, apply_rates, verify_seconds, differences)


def print_replay(result: Replay, raw_rate: float) -> None:
    n = f"{result.rows:,} rows, {result.events:,} events"
    base = f"{raw_rate:,.0f} tx/s"
    runs = f"of {len(result.apply_rates)} runs (this: the median)"
    print(row("raw INSERT, 1 row per transaction", base, "(baseline)"))
    for name, rates in (("replay: rebuild aggregates", result.rebuild_rates), ("replay --apply", result.apply_rates)):
        rate = statistics.median(rates)
        print(row(f"{name} ({n})", f"{rate:,.0f} ev/s", base, f"{rate / raw_rate:.2f}", ">= 20,000 ev/s"))
        print(row(f"  ev/s {runs}", f"{min(rates):,.0f}-{max(rates):,.0f}"))
    seconds = result.verify_seconds
    print(row(f"replay --verify ({n})", f"{statistics.median(seconds):.1f} s", "", "", "<= 10 s at 100k events"))
    print(row(f"  seconds {runs}", f"{min(seconds):.1f}-{max(seconds):.1f}"))
    print(row("replay --verify: differences (the most in a run)", f"{result.differences}", "", "", "0"))


def start_floor(python: str = sys.executable) -> float:
    """Baseline of the agent's start: the bare interpreter, `python -c pass`."""
    samples = []
    for _ in range(10):
        started = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]
