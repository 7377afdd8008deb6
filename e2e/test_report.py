"""`report` end to end: what ended jobs used, summed by submitter, label, provider, state
and day, from real local processes (measured) and sim workers (not), with retries and a
cancel; windows, filters, JSON, refusals, and the read model the sums come from replaying
to the same rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from e2e.test_access import create_token
from hodei.domain.phases import ran_text
from hodei.testing import Cli, ServerProcess, hodei_server, query, wait_all, wait_running

pytestmark = pytest.mark.e2e

# A command that keeps a core busy for about a second (CPU its worker measures).
SPIN = "python3 -c 'import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass'"


def _report(cli: Cli, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli.cli("report", *args, "-o", "json", check=True).stdout)
    return found


def _groups(found: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    return {None if group["none"] else group["key"]: group for group in found["groups"]}


def test_report_sums_what_ended_jobs_used_by_submitter_label_provider_state_and_day(
    fresh_database_url: str, tmp_path: Path
) -> None:
    env = {"HODEI_SIM_ENABLED": "1"}
    alice_token = create_token(fresh_database_url, "alice", "submit")
    bob_token = create_token(fresh_database_url, "bob", "submit")
    reader_token = create_token(fresh_database_url, "auditor", "read")
    with ServerProcess(fresh_database_url, tmp_path, env, token=alice_token, http=True) as server:
        bob = Cli(server.address, ("--token", bob_token))
        reader = Cli(server.address, ("--token", reader_token))

        def run(cli: Cli, *args: str) -> str:
            return cli.cli("job", "run", *args, check=True).stdout.strip()

        spun = run(server, "-p", "local", "-c", SPIN, "--cpu", "0.5", "-l", "team=data")
        slept = run(server, "-p", "local", "-c", "sleep 1", "-l", "team=data")
        retried = run(bob, "-p", "local", "-c", "sleep 0.5; exit 3", "--retry", "1", "-l", "team=web")
        simulated = run(bob, "-p", "sim", "-c", "true", "-e", "HODEI_SIM_SECONDS=1.5")
        cancelled = run(bob, "-p", "local", "-c", "sleep 60")
        wait_running(fresh_database_url, cancelled)
        bob.cli("job", "cancel", cancelled, check=True)
        jobs = [spun, slept, retried, simulated, cancelled]
        states = wait_all(fresh_database_url, jobs, 90)
        assert [states[job] for job in jobs] == ["SUCCEEDED", "SUCCEEDED", "FAILED", "SUCCEEDED", "CANCELLED"]
        # What each job's row says it used: the sums' source, checked against its times.
        rows = {
            row[0]: row[1:]
            for row in query(
                fresh_database_url,
                "SELECT id::text, run_seconds, cpu_seconds, peak_memory_bytes, "
                "extract(epoch FROM completed_at - started_at)::float8, attempt FROM jobs",
            )
        }
        run_seconds, cpu_seconds, peak, last_attempt, _ = rows[spun]
        assert run_seconds == last_attempt and 1 <= run_seconds < 60
        assert 0.9 <= cpu_seconds <= run_seconds + 1 and peak > 0
        # Two attempts of half a second each, the first one's time too.
        run_seconds, _, _, last_attempt, attempts = rows[retried]
        assert attempts == 2 and run_seconds >= 1.0 and run_seconds > last_attempt + 0.4
        assert rows[simulated][0] >= 1.5 and rows[simulated][1:3] == (None, None)  # sim workers measure nothing
        assert rows[cancelled][0] > 0  # from its start to its cancel
        # Each job says it too: `job get`, its JSON, its console page.
        got = json.loads(reader.cli("job", "get", retried, "-o", "json", check=True).stdout)
        assert (got["run_seconds"], got["cpu_seconds"], got["peak_memory_bytes"]) == rows[retried][:3]
        shown = reader.cli("job", "get", retried, check=True).stdout
        assert f"Ran: {ran_text(rows[retried][0], 2, rows[retried][1], rows[retried][2])}\n" in shown
        assert " over 2 attempts: " in shown
        sim = json.loads(reader.cli("job", "get", simulated, "-o", "json", check=True).stdout)
        assert sim["run_seconds"] >= 1.5 and (sim["cpu_seconds"], sim["peak_memory_bytes"]) == (None, None)
        page = requests.get(
            f"{server.http_url}/jobs/{spun}", headers={"Authorization": f"Bearer {reader_token}"}, timeout=30
        )
        assert page.ok and f'<td id="ran">{ran_text(rows[spun][0], 1, rows[spun][1], rows[spun][2])}</td>' in page.text

        by_submitter = _report(reader, "--by", "submitter")
        groups = _groups(by_submitter)
        assert set(groups) == {"alice", "bob"}
        assert (groups["alice"]["jobs"], groups["alice"]["succeeded"]) == (2, 2)
        assert [groups["bob"][k] for k in ("jobs", "succeeded", "failed", "cancelled", "timed_out")] == [3, 1, 1, 1, 0]
        # The retried job began two attempts; the cancelled one began its one.
        assert (groups["alice"]["attempts"], groups["bob"]["attempts"], by_submitter["total"]["attempts"]) == (2, 4, 6)
        total = by_submitter["total"]
        assert total["jobs"] == 5
        assert total["run_seconds"] == pytest.approx(sum(row[0] for row in rows.values()))
        assert total["cpu_seconds"] == pytest.approx(sum(row[1] for row in rows.values() if row[1] is not None))
        assert total["jobs_measured"] == 4
        assert total["peak_memory_bytes"] == max(row[2] for row in rows.values() if row[2] is not None)
        # CPU asked for: only the job that asked (--cpu 0.5), for the time it ran.
        assert total["cpu_asked_seconds"] == pytest.approx(0.5 * rows[spun][0])
        assert total["cpu_efficiency"] == pytest.approx(rows[spun][1] / (0.5 * rows[spun][0]))
        assert total["wait_p50_seconds"] is not None and total["wait_p50_seconds"] >= 0
        assert by_submitter["by"] == "submitter"
        ended = query(fresh_database_url, "SELECT min(completed_at), max(completed_at) FROM jobs")[0]
        window = [datetime.fromisoformat(by_submitter[end]) for end in ("since", "until")]
        assert window[0] < ended[0] and ended[1] < window[1] and window[1] - window[0] == timedelta(days=7)

        by_team = _groups(_report(reader, "--by", "label:team"))
        assert {key: group["jobs"] for key, group in by_team.items()} == {"data": 2, "web": 1, None: 2}
        assert by_team["data"]["cpu_asked_seconds"] is not None and by_team["web"]["cpu_asked_seconds"] is None
        by_provider = _groups(_report(reader, "--by", "provider"))
        assert {key: group["jobs"] for key, group in by_provider.items()} == {"local": 4, "sim": 1}
        assert by_provider["sim"]["cpu_seconds"] is None and by_provider["sim"]["jobs_measured"] == 0
        by_state = _groups(_report(reader, "--by", "state"))
        assert {key: group["jobs"] for key, group in by_state.items()} == {"SUCCEEDED": 3, "FAILED": 1, "CANCELLED": 1}
        (today,) = _groups(_report(reader, "--by", "day"))
        assert today == ended[1].astimezone(UTC).date().isoformat()
        (week,) = _groups(_report(reader, "--by", "week"))
        year, number, _ = ended[1].astimezone(UTC).isocalendar()
        assert week == f"{year}-W{number:02d}"
        months = _report(reader, "--by", "month", "--since", "60d")
        assert [(g["key"], g["jobs"]) for g in months["groups"]] == [(ended[1].astimezone(UTC).strftime("%Y-%m"), 5)]

        # Filters are job list's; the window is of when jobs ended.
        assert _report(reader, "--mine")["total"]["jobs"] == 0  # the reader submitted none
        assert _report(bob, "--mine")["total"]["jobs"] == 3
        assert _report(reader, "-u", "alice", "-l", "team=data", "--provider", "local")["total"]["jobs"] == 2
        assert _report(reader, "--name", "sleep")["total"]["jobs"] == 3
        assert _report(reader, "--until", "1h")["total"]["jobs"] == 0
        before_the_last = (ended[1] - timedelta(microseconds=1)).isoformat()
        assert _report(reader, "--since", before_the_last)["total"]["jobs"] == 1
        assert _report(reader, "--since", "1h")["total"]["jobs"] == 5

        text = reader.cli("report", "--by", "label:team", check=True).stdout
        lines = text.splitlines()
        assert lines[0].startswith("Jobs that ended from ") and lines[0].endswith(", by label:team")
        assert lines[1].split("\t")[0] == "LABEL:TEAM" and "CPU EFF" in lines[1]
        assert [line.split("\t")[0] for line in lines[2:]][-1] == "(all)"
        assert "(none)" in [line.split("\t")[0] for line in lines[2:]]
        sim_line = next(
            line
            for line in reader.cli("report", "--by", "provider", check=True).stdout.splitlines()
            if line.startswith("sim\t")
        )
        assert sim_line.split("\t")[6] == "1" and sim_line.split("\t")[8] == "-"  # ATTEMPTS; CPU USED: not measured

    # The sums are the log's: rebuilt from the events, the read model is the same.
    verified = hodei_server(fresh_database_url, "replay", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_report_refuses_bad_input_before_and_at_the_server(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path) as server:
        for args, said in [
            (["--by", "colour"], "report by `colour`: expected one of submitter, provider, pool, state, name, day"),
            (["--by", "label:"], "label keys must not be empty"),
            (["--by", "label:a b"], "label key `a b` must be at most"),
            (["--since", "1h", "--until", "2h"], "must be before its end"),
            (["--since", "yesterday"], "--since"),
            (["--provider", "nope"], "unknown provider `nope`"),
            (["-l", "a=b", "-l", "a=c"], "no job would match"),
        ]:
            refused = server.cli("report", *args)
            assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
            assert said in refused.stderr, (args, refused.stderr)
