"""``just bench-throughput``: how many jobs per second the control plane carries, beside
Procrastinate on the same database, in the same run.

1. Procrastinate: N no-op tasks deferred at once, one worker with concurrency C.
2. Hodei, N `sim` jobs submitted at once (capacity C): the whole control plane, no process starts.
3. Hodei, M local-provider `true` jobs submitted at once (capacity C).

Each is run HODEI_BENCH_REPEATS times (3) and prints its median run's jobs/s (with the
runs' spread), p50/p95 submit->done, and per job: events, outbox rows, transactions
(`pg_stat_database.xact_commit`), server CPU ms (the sim fleet's own process apart), and
PostgreSQL's CPU ms (the bench's own cluster).
Ratios: sim jobs/s / Procrastinate jobs/s, and local jobs/s / the agent's bare spawn rate
(interpreter start, import, first RPC).
4. Hodei, N `sim` jobs on a database with a history (``hodei.testing.add_history``: the
   jobs before, copied to about 20,000) / the same on that database when it was fresh;
   HODEI_BENCH_REPEATS pairs, each on a database of its own, the median pair's printed.
Goals (#13): sim >= 1.0x Procrastinate; <= 20 events, <= 25 transactions, <= 10 ms CPU per job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench import scale
from bench.common import database, database_cpu, header, percentile, process_cpu, row
from bench.jobs import job_latencies
from bench.local import floor, forked_floor
from bench.store import raw_insert_rate
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
from hodei.testing import ServerProcess, add_history, query


def _count(name: str, default: int) -> int:
    """A setting of the bench: a whole number of 1 or more, refused before any run starts."""
    raw = os.environ.get(name, str(default)).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{name} must be a whole number of 1 or more, got `{raw}`")
    return int(raw)


JOBS = _count("HODEI_BENCH_JOBS", 200)
UNLOADED = 5
FLEET = _count("HODEI_BENCH_FLEET", 1000)
REPLAY_EVENTS = _count("HODEI_BENCH_REPLAY_EVENTS", 100000)
LOCAL_JOBS = _count("HODEI_BENCH_LOCAL_JOBS", 100)
HISTORY_JOBS = _count("HODEI_BENCH_HISTORY_JOBS", 20000)
# Runs of each burst: identical runs on this shared machine differ by up to a fifth, so each
# figure is the median run's, printed with the spread of the runs' jobs/s.
REPEATS = _count("HODEI_BENCH_REPEATS", 3)
CONCURRENCY = 16
SIM = {"HODEI_SIM_ENABLED": "1", "HODEI_SIM_MAX_WORKERS": str(CONCURRENCY)}


@dataclass(frozen=True)
class Figures:
    jobs: int
    seconds: float
    latencies: list[float]
    # Rows of domain_events, and the events in them (a saga's moves of one transaction
    # share a row: ``hodei.store.events.pack``).
    event_rows: int
    events: int
    outbox: int
    transactions: int
    # Transactions rolled back: a write that lost a race (ConcurrencyConflict) and was retried.
    rollbacks: int
    # None when pg_stat_statements is not loaded.
    statements: int | None
    cpu_seconds: float
    # Submit->done of single jobs on the idle server, before the burst.
    unloaded: list[float]
    # The sim provider's fleet process (the simulated workers' side), apart from the server's.
    fleet_cpu_seconds: float | None = None
    # PostgreSQL's processes (None: a database server given by URL, not started here).
    database_cpu_seconds: float | None = None
    # jobs/s of every run this one is the median of (``median_run``).
    rates: tuple[float, ...] = ()

    @property
    def machine_cpu_seconds(self) -> float | None:
        """Every process the run's jobs kept busy: the platform's and the database's."""
        if self.database_cpu_seconds is None:
            return None
        return self.cpu_seconds + (self.fleet_cpu_seconds or 0.0) + self.database_cpu_seconds

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


# PostgreSQL adds a backend's counts to pg_stat_database at most once a second, and at its exit.
_FLUSHED = 1.5


class _Watch:
    """The bench's one connection that waits for the jobs: each poll is a transaction and a
    statement of its own, left out of the per-job figures (a new connection per poll, as
    before, cost two transactions a poll: about two a job)."""

    def __init__(self, url: str) -> None:
        self._connection = psycopg.connect(url, autocommit=True)
        self.statements = 0

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.statements += 1
        return self._connection.execute(sql.encode(), params).fetchall()

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self._connection.close()


def _transactions(url: str) -> tuple[int, int]:
    """Committed and rolled-back transactions of the bench database so far."""
    ((commits, rollbacks),) = query(
        url, "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(commits), int(rollbacks)


def _transactions_since(before: tuple[int, int], url: str) -> tuple[int, int]:
    commits, rollbacks = _transactions(url)
    return commits - before[0], rollbacks - before[1]


def _statements(url: str) -> int | None:
    """Statements run in the bench database so far, when pg_stat_statements is loaded."""
    try:
        query(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        ((calls,),) = query(
            url,
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    except psycopg.Error:
        return None
    return int(calls)


def _since(statements: int | None, url: str) -> int | None:
    now = _statements(url)
    return None if statements is None or now is None else now - statements


def median_run(runs: list[Figures]) -> Figures:
    """The run of median jobs/s, carrying every run's jobs/s."""
    ordered = sorted(runs, key=lambda figures: figures.rate)
    return replace(ordered[len(ordered) // 2], rates=tuple(figures.rate for figures in ordered))


def _since_cpu(before: float | None, url: str) -> float | None:
    return None if before is None else (database_cpu(url) or 0.0) - before


def _counts(url: str) -> tuple[int, int, int]:
    """Rows of domain_events, the events in them, outbox rows."""
    rows, events = query(url, f"SELECT count(*), coalesce(sum({scale.EVENTS_IN_ROW}), 0) FROM domain_events")[0]
    outbox = query(url, "SELECT count(*) FROM outbox_events")[0][0]
    return int(rows), int(events), int(outbox)


def procrastinate_run(url: str) -> Figures:
    import procrastinate

    # The app is made here, in the bench's main module, and its worker runs in this process:
    # Procrastinate's warning that a separate worker could not import its tasks is moot.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

    async def run() -> Figures:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
        submitted: dict[int, float] = {}
        done: dict[int, float] = {}

        @app.task(name="noop")
        async def noop(index: int) -> None:
            done[index] = time.perf_counter()

        async with app.open_async():
            if query(url, "SELECT to_regclass('procrastinate_jobs')") == [(None,)]:
                await app.schema_manager.apply_schema_async()
            transactions, statements, cpu = _transactions(url), _statements(url), time.process_time()
            database_cpu_before = database_cpu(url)
            started = time.perf_counter()
            worker = asyncio.create_task(app.run_worker_async(concurrency=CONCURRENCY, install_signal_handlers=False))
            for index in range(JOBS):
                submitted[index] = time.perf_counter()
                await noop.defer_async(index=index)
            while len(done) < JOBS:
                await asyncio.sleep(0.01)
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu
            database_seconds = _since_cpu(database_cpu_before, url)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        latencies = [done[i] - submitted[i] for i in range(JOBS)]
        await asyncio.sleep(_FLUSHED)
        commits, rollbacks = _transactions_since(transactions, url)
        return Figures(
            JOBS,
            seconds,
            latencies,
            0,
            0,
            0,
            commits,
            rollbacks,
            _since(statements, url),
            cpu,
            [],
            database_cpu_seconds=database_seconds,
        )

    return asyncio.run(run())


def hodei_run(url: str, provider: str, count: int, env: dict[str, str]) -> Figures:
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(url, Path(tmp), env) as server:
        assert server.process is not None
        # Warm-up jobs first (connections, the provider), then single jobs on the idle server.
        unloaded = job_latencies(server.address, provider, UNLOADED)
        channel = grpc.insecure_channel(server.address)
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        spec = common_pb2.JobSpec(name="bench", command="true", timeout_seconds=600, provider=provider)
        time.sleep(2)  # the last single job's worker is released
        (rows, events, outbox), statements = _counts(url), _statements(url)
        transactions, cpu = _transactions(url), process_cpu(server.process.pid)
        database_cpu_before = database_cpu(url)
        fleet = server.sim_fleet()  # started by the warm-up jobs
        fleet_cpu = process_cpu(fleet) if fleet else 0.0
        # Wall-clock times on both sides: a job's end is its completed_at, written by the
        # server on this machine, so polling late (while still submitting) changes nothing.
        submitted = {}
        for _ in range(count):
            at = time.time()
            submitted[stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec)).job_id] = at
        ended: dict[str, float] = {}
        with _Watch(url) as watch:
            while len(ended) < count:
                for job_id, state, completed_at in watch.rows(
                    "SELECT id::text, state, extract(epoch FROM completed_at) FROM jobs WHERE id = ANY(%s::uuid[]) "
                    "AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')",
                    (list(submitted),),
                ):
                    if state != "SUCCEEDED":
                        raise RuntimeError(f"bench job {job_id} ended {state}")
                    ended[job_id] = float(completed_at)
                time.sleep(0.05)
            # Every saga settled: what a job costs includes releasing its worker.
            while watch.rows("SELECT count(*) FROM sagas WHERE state IN ('IN_PROGRESS', 'COMPENSATING')")[0][0]:
                time.sleep(0.1)
        started = min(submitted.values())
        seconds = max(ended.values()) - started
        database_seconds = _since_cpu(database_cpu_before, url)
        time.sleep(_FLUSHED)
        commits, rollbacks = _transactions_since(transactions, url)
        after_rows, after_events, after_outbox = _counts(url)
        figures = Figures(
            count,
            seconds,
            [ended[job_id] - submitted[job_id] for job_id in submitted],
            after_rows - rows,
            after_events - events,
            after_outbox - outbox,
            commits - watch.statements,
            rollbacks,
            None if (since := _since(statements, url)) is None else since - watch.statements,
            process_cpu(server.process.pid) - cpu,
            unloaded,
            process_cpu(fleet) - fleet_cpu if fleet else None,
            database_seconds,
        )
        channel.close()
        return figures


def history_run() -> tuple[Figures, Figures, int, list[float]]:
    """Sim jobs on a fresh database, then on the same database once it has a past of
    about ``HISTORY_JOBS`` jobs: a job must cost the same whatever ran before it. Each pair
    on a database of its own (the copies' payloads keep their originals' ids, which a
    replay would not take for the read models': ``scale.replay_run`` makes its own copies),
    REPEATS pairs: one pair's ratio moved between 0.69 and 1.36 on one machine within an
    hour. The median pair, its past's size and every pair's ratio, lowest first."""
    pairs = []
    for _ in range(REPEATS):
        with database() as url:
            young = hodei_run(url, "sim", JOBS, SIM)
            ((jobs,),) = query(url, "SELECT count(*) FROM jobs")
            add_history(url, max(1, HISTORY_JOBS // jobs))
            ((past,),) = query(url, "SELECT count(*) FROM jobs")
            pairs.append((young, hodei_run(url, "sim", JOBS, SIM), int(past)))
    pairs.sort(key=lambda pair: pair[1].rate / pair[0].rate)
    young, aged, past = pairs[len(pairs) // 2]
    return young, aged, past, [pair[1].rate / pair[0].rate for pair in pairs]


def _rows(name: str, figures: Figures, baseline: Figures | None, goal: str) -> None:
    ratio = f"{figures.rate / baseline.rate:.2f}" if baseline else ""
    base = f"{baseline.rate:.1f} jobs/s" if baseline else "(baseline)"
    print(row(f"{name}: jobs/s ({figures.jobs})", f"{figures.rate:.1f} jobs/s", base, ratio, goal))
    if len(figures.rates) > 1:
        spread = f"{min(figures.rates):.1f}-{max(figures.rates):.1f}"
        print(row(f"  jobs/s of {len(figures.rates)} runs (this: the median's)", spread))
    for q in (50, 95):
        print(row(f"{name}: submit->done p{q}", f"{percentile(figures.latencies, q) * 1000:.0f} ms"))
    if figures.unloaded:
        first, alone = figures.latencies[0], percentile(figures.unloaded, 50)
        print(
            row(
                f"{name}: first of the burst submit->done",
                f"{first * 1000:.0f} ms",
                f"{alone * 1000:.0f} ms alone",
                f"{first / alone:.2f}",
                "<= 2.0",
            )
        )
    n = figures.jobs
    if figures.event_rows:
        counts = f"{figures.event_rows / n:.1f} / {figures.outbox / n:.1f}"
        print(row(f"{name}: event rows / outbox rows per job", counts, "", "", "<= 20"))
        print(row(f"{name}: events in those rows per job (moves share one)", f"{figures.events / n:.1f}"))
    goals = ("<= 25", "<= 10 ms") if baseline else ("", "")
    print(row(f"{name}: transactions per job", f"{figures.transactions / n:.1f}", "", "", goals[0]))
    print(row(f"{name}: rolled back per job (lost races, retried)", f"{figures.rollbacks / n:.2f}"))
    statements = "n/a" if figures.statements is None else f"{figures.statements / n:.1f}"
    print(row(f"{name}: statements per job (pg_stat_statements)", statements))
    print(row(f"{name}: CPU per job", f"{figures.cpu_seconds / n * 1000:.1f} ms", "", "", goals[1]))
    if figures.fleet_cpu_seconds is not None:
        fleet = f"{figures.fleet_cpu_seconds / n * 1000:.1f} ms"
        print(row(f"{name}: the simulated workers' own CPU per job (fleet process)", fleet))
    machine = figures.machine_cpu_seconds
    if figures.database_cpu_seconds is not None and machine is not None:
        print(row(f"{name}: PostgreSQL CPU per job", f"{figures.database_cpu_seconds / n * 1000:.1f} ms"))
        mine = machine / n
        against, ratio = ("(baseline)", "") if baseline is None else ("", "")
        if baseline is not None and baseline.machine_cpu_seconds is not None:
            theirs = baseline.machine_cpu_seconds / baseline.jobs
            against, ratio = f"{theirs * 1000:.1f} ms", f"{mine / theirs:.1f}"
        print(row(f"{name}: CPU per job, all its processes", f"{mine * 1000:.1f} ms", against, ratio))


def main() -> None:
    with database() as url:
        raw = median_run([procrastinate_run(url) for _ in range(REPEATS)])
        sim = median_run([hodei_run(url, "sim", JOBS, SIM) for _ in range(REPEATS)])
        local_env = {"HODEI_LOCAL_MAX_WORKERS": str(CONCURRENCY)}
        local = median_run([hodei_run(url, "local", LOCAL_JOBS, local_env) for _ in range(REPEATS)])
        with tempfile.TemporaryDirectory() as tmp, ServerProcess(url, Path(tmp)) as server:
            spawns = floor(server.address)
            forks = forked_floor()
            lines = scale.log_rate(server.address, url)
        fleet = scale.fleet_run(url, FLEET)
        insert_rate = raw_insert_rate(url)
        replayed = scale.replay_run(url, REPLAY_EVENTS, REPEATS)
    young, aged, past, ratios = history_run()
    spawn_rate = 1 / (sum(spawns) / len(spawns))
    print(header())
    _rows("Procrastinate no-op (in-process CPU)", raw, None, "")
    _rows("Hodei sim jobs", sim, raw, ">= 1.0")
    print(
        row(
            f"Hodei sim jobs/s after {past:,} past jobs",
            f"{aged.rate:.1f} jobs/s",
            f"{young.rate:.1f} jobs/s fresh",
            f"{aged.rate / young.rate:.2f}",
            ">= 0.9",
        )
    )
    if len(ratios) > 1:
        print(row(f"  ratios of {len(ratios)} pairs (this: the median's)", f"{ratios[0]:.2f}-{ratios[-1]:.2f}"))
    print(
        row(
            f"  CPU per job after {past:,} past jobs",
            f"{aged.cpu_seconds / aged.jobs * 1000:.1f} ms",
            f"{young.cpu_seconds / young.jobs * 1000:.1f} ms fresh",
            f"{aged.cpu_seconds / young.cpu_seconds:.2f}",
        )
    )
    if aged.database_cpu_seconds and young.database_cpu_seconds:
        print(
            row(
                f"  PostgreSQL CPU per job after {past:,} past jobs",
                f"{aged.database_cpu_seconds / aged.jobs * 1000:.1f} ms",
                f"{young.database_cpu_seconds / young.jobs * 1000:.1f} ms fresh",
                f"{aged.database_cpu_seconds / young.database_cpu_seconds:.2f}",
            )
        )
    print(row("agent bare spawn rate (one at a time)", f"{spawn_rate:.1f} /s", "(baseline)"))
    print(
        row(
            f"Hodei local `true` jobs/s ({local.jobs})",
            f"{local.rate:.1f} jobs/s",
            f"{spawn_rate:.1f} /s",
            f"{local.rate / spawn_rate:.2f}",
            ">= 0.7",
        )
    )
    _rows("Hodei local jobs", local, raw, "")
    print(
        row(
            "  the same against the forked start's rate",
            f"{local.rate:.1f} jobs/s",
            f"{1 / percentile(forks.samples, 50):.1f} /s",
            f"{local.rate * percentile(forks.samples, 50):.2f}",
        )
    )
    bare = scale.start_floor()
    start, forked = percentile(spawns, 50), percentile(forks.samples, 50)
    print(row("bare interpreter start (python -c pass)", f"{bare * 1000:.0f} ms", "(baseline)"))
    print(
        row(
            "agent start: exec -> first RPC p50",
            f"{start * 1000:.0f} ms",
            f"{bare * 1000:.0f} ms",
            f"{start / bare:.2f}",
        )
    )
    print(
        row(
            "agent start: forked (as the provider does) -> first RPC p50",
            f"{forked * 1000:.0f} ms",
            f"{bare * 1000:.0f} ms",
            f"{forked / bare:.2f}",
            "<= 100 ms",
        )
    )
    print(row("  a forked agent's CPU, fork to exit", f"{forks.cpu_each * 1000:.0f} ms"))
    scale.print_logs(lines, scale.pipe_rate())
    scale.print_fleet(fleet, FLEET)
    scale.print_replay(replayed, insert_rate)


if __name__ == "__main__":
    main()
