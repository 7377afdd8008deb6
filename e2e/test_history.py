"""A new job must not cost more because many jobs ran before it: every read and write of
a job's life finds its rows through an index, never by reading a table of the history.

Counted, not timed: PostgreSQL counts the sequential scans of each table
(``pg_stat_user_tables.seq_scan``). With 20,000 past jobs, one command's read of its job's
flow that compared the workers' job ids as text took 29 ms instead of 0.5 (sim jobs/s fell
to 0.58x); on a fresh database the same plan costs nothing, so only a history shows it.
Listing every job is apart: its total is an exact count of the jobs (its page, newest
first, is read off an index: sql/010_job_list_order.sql).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.test_sim import sim
from hodei.testing import HISTORY_TABLES, ServerProcess, add_history, eventually, query, wait_settled

pytestmark = pytest.mark.e2e

# Past jobs: enough that the planner prefers an index for one job's rows wherever one serves.
COPIES = 2000
ENV = {"HODEI_SIM_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0"}
# A pipeline whose first job fails (`job workflow`, `job retry --workflow` read its jobs).
PIPELINE = """\
name: build
provider: sim
command: make
env: {HODEI_SIM_EXIT_CODE: "3"}
---
name: test
provider: sim
command: make test
after: {build: ok}
"""


def submit(server: ServerProcess, env: str) -> str:
    code, out, err = sim(server, env)
    assert code == 0, err
    return out.strip()


def run_job(server: ServerProcess, env: str = "HODEI_SIM_LINES=3") -> str:
    job_id = submit(server, env)
    wait_settled(server.database_url, job_id, 60)
    return job_id


def others_gone(url: str) -> bool:
    """Every other connection to the database has ended: a backend's counts reach the
    statistics when it exits, at the latest."""
    rows = query(
        url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return bool(rows[0][0] == 0)


def test_a_job_after_thousands_reads_no_table_of_the_history_whole(database_url: str, tmp_path: Path) -> None:
    with ServerProcess(database_url, tmp_path, ENV) as server:
        run_job(server)
    add_history(database_url, COPIES)
    assert query(database_url, "SELECT count(*) FROM jobs")[0][0] == COPIES + 1
    eventually(lambda: others_gone(database_url), 30, what="the server's connections to close")
    query(database_url, "SELECT pg_stat_reset()")

    with ServerProcess(database_url, tmp_path, ENV) as server:
        job_id = run_job(server)
        assert server.cli("job", "logs", job_id, check=True).stdout.splitlines() == [f"sim line {n}" for n in (1, 2, 3)]
        assert "SUCCEEDED" in server.cli("job", "describe", job_id, check=True).stdout
        for read in ("events", "history"):
            server.cli("job", read, job_id, check=True)
        failed = run_job(server, "HODEI_SIM_EXIT_CODE=3")
        retried = server.cli("job", "retry", failed, "--wait").returncode
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(PIPELINE)
        first = server.cli("job", "run", "--file", str(pipeline), "--wait").stdout.split()[0]
        assert "FAILED, 2 jobs" in server.cli("job", "workflow", first, check=True).stdout
        pipeline_retried = server.cli("job", "retry", "--workflow", first, "--wait").returncode
        cancelled = submit(server, "HODEI_SIM_SECONDS=60")
        running = "SELECT state FROM jobs WHERE id = %s"
        eventually(lambda: query(database_url, running, (cancelled,)) == [("RUNNING",)], 30)
        server.cli("job", "cancel", cancelled, check=True)
        wait_settled(database_url, cancelled, 60)
    assert retried == pipeline_retried == 3
    eventually(lambda: others_gone(database_url), 30, what="the server's connections to close")

    scans = query(
        database_url,
        "SELECT relname, seq_scan FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = ANY(%s)",
        (list(HISTORY_TABLES),),
    )
    assert len(scans) == len(HISTORY_TABLES)
    assert {table: count for table, count in scans if count} == {}
