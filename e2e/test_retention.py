"""Retention: published outbox rows and job logs (with the jobs' artifacts) go after
their time; the event log stays, and a replay still rebuilds exactly what is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from hodei.testing import ServerProcess, eventually, hodei_server, query, wait_settled

pytestmark = pytest.mark.e2e


def test_old_outbox_rows_logs_and_artifacts_go_and_replay_still_agrees(fresh_database_url: str, tmp_path: Path) -> None:
    url = fresh_database_url
    env = {"HODEI_OUTBOX_RETENTION": "2", "HODEI_LOG_RETENTION": "4", "HODEI_RETENTION_INTERVAL": "1"}
    with ServerProcess(url, tmp_path, env) as server:
        job_ids = [
            server.cli(
                "job",
                "run",
                "--provider",
                "local",
                "--command",
                "echo kept a while | tee kept.txt",
                "--wait",
                "--artifact",
                "kept.txt",
            ).stdout.strip()
            for _ in range(3)
        ]
        for job_id in job_ids:
            wait_settled(url, job_id)
        events = query(url, "SELECT count(*) FROM domain_events")[0][0]
        files = [tmp_path / f"{job_id}.log" for job_id in job_ids]
        files += [tmp_path / "artifacts" / job_id / "1" / "kept.txt" for job_id in job_ids]
        assert all(path.exists() for path in files)
        assert server.cli("job", "artifacts", job_ids[0], "kept.txt", "--save", "-").stdout == "kept a while\n"

        def published_old() -> int:
            return int(
                query(
                    url,
                    "SELECT count(*) FROM outbox_events WHERE status = 'PUBLISHED' "
                    "AND published_at < now() - interval '3 seconds'",
                )[0][0]
            )

        eventually(lambda: published_old() == 0 and query(url, "SELECT count(*) FROM outbox_events")[0][0] < events, 30)
        eventually(lambda: query(url, "SELECT count(*) FROM job_log_files")[0][0] == 0, 30, what="the logs to expire")
        assert not any(path.exists() for path in files)
        assert query(url, "SELECT count(*) FROM domain_events WHERE event_type = 'JobLogsExpired'")[0][0] == 3
        assert query(url, "SELECT count(*) FROM domain_events")[0][0] >= events  # the log is kept
        assert server.cli("job", "logs", "--id", job_ids[0], check=True).stdout == ""
        gone = server.cli("job", "artifacts", job_ids[0], "-o", "json", check=True).stdout
        assert '"expired": true' in gone and '"artifacts": []' in gone
        refused = server.cli("job", "artifacts", job_ids[0], "kept.txt", "--save", "-")
        assert "(its output was deleted by retention)" in refused.stderr
    verify = hodei_server(url, "replay", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
