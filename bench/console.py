"""``just bench-console``: how fast the web console's pages answer with 10,000 jobs in
the database, next to the SQL those pages run, timed directly on a warm connection.

The jobs are written through the domain (submitted, assigned, run and finished: a mix of
SUCCEEDED, FAILED and CANCELLED, with names and labels to filter on), then their outbox
rows are marked published, so that the server's relay has nothing to do while pages are
timed. Each page is fetched over HTTP keep-alive, as a browser does. Then as many jobs again
are queued for a provider no server runs, and the queue's listing (what `queue` and `job get`
of a queued job ask) is timed the same way. Goal (#14): p50 under 100 ms for every page.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import requests
from psycopg_pool import ConnectionPool

from bench.common import database, percentile, row
from hodei._proto import scheduler_pb2, scheduler_pb2_grpc
from hodei.admission import FIFO
from hodei.domain.job import Job, JobState
from hodei.domain.provider import PROVIDER_IDS, ProviderType
from hodei.domain.spec import JobSpec, LabelSelector
from hodei.limits import Limits
from hodei.report import Grouping, report_params, window
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import open_pool
from hodei.store.readmodels import JobFilters, job_list_params
from hodei.store.sql import query as named
from hodei.testing import ServerProcess
from hodei.wire import MAX_QUEUE_LISTED

JOBS = int(os.environ.get("HODEI_BENCH_CONSOLE_JOBS", "10000"))
BATCH = 250
ROUNDS = 40
GOAL_MS = 100.0


def finished_job(index: int) -> Job:
    spec = JobSpec(
        name=f"job-{index}",
        command=f"echo {index}",
        timeout_seconds=60,
        provider="local",
        labels={"team": ("blue", "red", "green")[index % 3]},
    )
    job = Job.submit(spec, uuid4())
    local = str(PROVIDER_IDS[ProviderType.LOCAL])
    job.select_provider(local, "local")
    job.admit()
    if index % 20 == 0:
        job.cancel("bench")
        return job
    worker = str(uuid4())
    job.assign(worker, local, "local")
    job.accept(worker)
    failed = index % 7 == 0
    state = JobState.FAILED if failed else JobState.SUCCEEDED
    job.finish(worker, state, 3 if failed else 0, "exited with code 3" if failed else None)
    return job


def queued_job(index: int) -> Job:
    """A job waiting in the queue of a provider no server runs (never admitted)."""
    job = Job.submit(JobSpec(name=f"queued-{index}", command="true", timeout_seconds=60), uuid4())
    job.select_provider(str(PROVIDER_IDS[ProviderType.KUBERNETES]), "kubernetes")
    return job


def seed(url: str, make: Callable[[int], Job] = finished_job, *, analyze: bool = False) -> list[Job]:
    """JOBS jobs (``make``), their outbox rows published (no relay has anything to do);
    ``analyze``: then the statistics autovacuum would gather (the pages' runs recorded
    before the queue's was timed had none: kept so, to compare with them)."""
    pool = open_pool(url, max_size=2)
    store = HodeiStore(pool)
    made: list[Job] = []
    try:
        for start in range(0, JOBS, BATCH):
            jobs = [make(index) for index in range(start, min(start + BATCH, JOBS))]
            store.write(jobs, Meta(actor=SYSTEM))
            made.extend(jobs)
        with pool.connection() as conn:
            conn.execute("UPDATE outbox_events SET status = 'PUBLISHED', published_at = now()")
            if analyze:
                conn.execute("ANALYZE")
    finally:
        pool.close()
    return made


def timed(call: Callable[[], Any]) -> list[float]:
    for _ in range(5):
        call()
    spent = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent


def main() -> None:
    with database() as url:
        started = time.monotonic()
        failed_job = next(str(job.id) for job in seed(url) if job.state is JobState.FAILED)
        print(f"seeded {JOBS} finished jobs in {time.monotonic() - started:.1f}s")
        listing = job_list_params(None, 50, 0, JobFilters())

        def narrowed(**wanted: Any) -> dict[str, Any]:
            return job_list_params(wanted.pop("state", None), 50, 0, JobFilters(**wanted))

        def reported(by: str) -> dict[str, Any]:
            return report_params(Grouping.of(by), *window(None, None, datetime.now(UTC)), JobFilters())

        pages: list[tuple[str, str, list[tuple[str, Any]]]] = [
            ("jobs list", "/jobs", [("list_jobs", listing), ("count_jobs", listing)]),
            (
                "jobs list, state=FAILED",
                "/jobs?state=FAILED",
                [("list_jobs", narrowed(state="FAILED")), ("count_jobs", narrowed(state="FAILED"))],
            ),
            (
                "jobs list, name contains",
                "/jobs?name=job-77",
                [("list_jobs", narrowed(name="job-77")), ("count_jobs", narrowed(name="job-77"))],
            ),
            (
                "jobs list, label team=blue",
                "/jobs?label=team%3Dblue",
                [
                    ("list_jobs", narrowed(labels=LabelSelector.of(["team=blue"]))),
                    ("count_jobs", narrowed(labels=LabelSelector.of(["team=blue"]))),
                ],
            ),
            ("live rows (every 2 s)", "/jobs/rows", [("list_jobs", listing)]),
            (
                "one job (describe, events, log)",
                f"/jobs/{failed_job}",
                [("get_job", (failed_job,)), ("job_events", (failed_job,)), ("workers_of_job", (failed_job,))],
            ),
            ("sagas", "/sagas", [("list_sagas", {"state": None, "saga_type": None, "job_id": None, "limit": 100})]),
            ("providers", "/providers", [("list_providers", None)]),
            ("report, by submitter (the last 7 days)", "/report", [("jobs_report", reported("submitter"))]),
            ("report, by label team", "/report?by=label%3Ateam", [("jobs_report", reported("label:team"))]),
        ]
        env = {"HODEI_LOCAL_ENABLED": "1", "HODEI_DOCKER_ENABLED": "0"}
        with ServerProcess(url, Path(tempfile.mkdtemp(prefix="hodei-bench-console-")), env, http=True) as server:
            session = requests.Session()
            pool = open_pool(url, max_size=1)
            print(f"console pages with {JOBS} jobs: p50 / p95 ms (SQL: the page's queries, run directly)")
            print(row("page", "p50 / p95 ms", "SQL p50 ms", "page / SQL", f"goal p50 < {GOAL_MS:.0f} ms"))
            worst = 0.0
            try:
                for title, path, statements in pages:

                    def fetch(path: str = path) -> None:
                        response = session.get(server.http_url + path)
                        response.raise_for_status()

                    def run_sql(statements: list[tuple[str, Any]] = statements) -> None:
                        with pool.connection() as conn:
                            for name, params in statements:
                                conn.execute(named(name), params).fetchall()

                    page_ms = timed(fetch)
                    sql_ms = timed(run_sql)
                    p50, p95, sql = percentile(page_ms, 50), percentile(page_ms, 95), percentile(sql_ms, 50)
                    worst = max(worst, p50)
                    print(row(title, f"{p50:.1f} / {p95:.1f}", f"{sql:.1f}", f"{p50 / sql:.1f}x"))
                worst = max(worst, queue(server, url, pool))
            finally:
                pool.close()
            verdict = "met" if worst < GOAL_MS else "NOT met"
            print(f"slowest page p50: {worst:.1f} ms; goal (< {GOAL_MS:.0f} ms) {verdict}")


def queue(server: ServerProcess, url: str, pool: ConnectionPool) -> float:
    """The queue's listing (`queue`, and `job get` of a queued job) and an admission
    round's query, with JOBS more jobs queued for a provider no server runs: the server is
    stopped while they are written (its relay would take their rows), and started again.
    Its p50."""
    server.stop()
    seed(url, queued_job, analyze=True)  # the queue's estimates with statistics: what JIT reacted to
    server.start()
    request = scheduler_pb2.GetQueueStatusRequest(limit=MAX_QUEUE_LISTED)
    with server.channel() as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        listing = timed(lambda: stub.GetQueueStatus(request, timeout=60))

    def run_sql(name: str, params: dict[str, Any], order: Mapping[str, bool] = FIFO) -> Callable[[], None]:
        def run() -> None:
            with pool.connection() as conn:
                conn.execute(named(name, order), {**params, "recent": 600.0}).fetchall()

        return run

    round_params = {"provider": "kubernetes", "limit": 16, "joining": None, "pools": None, "submitters": None}
    listed_sql = timed(run_sql("queued_jobs", {"limit": MAX_QUEUE_LISTED}))
    next_sql = timed(run_sql("next_in_queue", round_params))
    lock_sql = timed(run_sql("lock_admission", {"provider": "kubernetes", "joining": None}, {}))
    p50, p95, sql = percentile(listing, 50), percentile(listing, 95), percentile(listed_sql, 50)
    print(row(f"queue, {JOBS} jobs queued (gRPC)", f"{p50:.1f} / {p95:.1f}", f"{sql:.1f}", f"{p50 / sql:.1f}x"))
    print(row(f"  an admission round's query, {JOBS} queued", "", f"{percentile(next_sql, 50):.1f}", ""))
    print(row("  ... and its lock and look for pools and limits", "", f"{percentile(lock_sql, 50):.1f}", ""))
    # The fair order (HODEI_QUEUE_ORDER=fair) ranks every job in line, where submission
    # order stops at the round's free slots.
    fair = {"fair": True}
    fair_listed = timed(run_sql("queued_jobs", {"limit": MAX_QUEUE_LISTED}, fair))
    fair_next = timed(run_sql("next_in_queue", round_params, fair))
    print(row("  the same in the fair order: queue's SQL", "", f"{percentile(fair_listed, 50):.1f}", ""))
    print(row("  ... and an admission round's query", "", f"{percentile(fair_next, 50):.1f}", ""))
    # The same with every submitter limited (all these jobs are one submitter's: the most a
    # round's window over a submitter's jobs has to rank).
    Limits(HodeiStore(pool)).set("*", SYSTEM, {"jobs": 100})
    limited_listed = timed(run_sql("queued_jobs", {"limit": MAX_QUEUE_LISTED}))
    limited_next = timed(run_sql("next_in_queue", {**round_params, "submitters": [SYSTEM]}))
    print(row("  the same with `limit set '*' 100`: queue's SQL", "", f"{percentile(limited_listed, 50):.1f}", ""))
    print(row("  ... and an admission round's query", "", f"{percentile(limited_next, 50):.1f}", ""))
    return p50


if __name__ == "__main__":
    main()
