"""The alerts of deploy/prometheus-rules.yml run by Prometheus' own rule engine (`promtool
test rules`, Debian's prometheus package): each fires on the series that should raise it,
with the labels and the words it says, and stays quiet before its `for` has passed and on
series that should not raise it."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.test_deploy import RULES, alert_rules

# (labels, summary) of an alert expected to fire; its description is the rule's with the
# labels put in (no description says a value).
Fired = tuple[dict[str, str], str]


@dataclass(frozen=True)
class Case:
    alert: str
    # Series (PromQL selector) -> values a minute apart, in promtool's notation ('0+1x30').
    series: dict[str, str]
    # Minutes after the first sample -> the alerts firing then.
    checks: dict[int, list[Fired]] = field(default_factory=dict)


CASES = [
    Case(
        "HodeiDatabaseUnreachable",
        {
            'hodei_database_up{instance="hodei-1:8080"}': "1 1 0x10",
            'hodei_database_up{instance="hodei-2:8080"}': "1x12",
        },
        {
            3: [],
            5: [
                (
                    {"severity": "critical", "instance": "hodei-1:8080"},
                    "Hodei server hodei-1:8080 cannot reach PostgreSQL",
                )
            ],
        },
    ),
    Case(
        "HodeiOutboxDeadLetters",
        # Every server reads the same rows: counted once.
        {'hodei_outbox_dead_letters{instance="a"}': "0 0 3x5", 'hodei_outbox_dead_letters{instance="b"}': "0 0 3x5"},
        {1: [], 3: [({"severity": "warning"}, "3 outbox rows gave up on their delivery")]},
    ),
    Case(
        "HodeiOutboxStalled",
        {'hodei_outbox_oldest_pending_seconds{instance="a"}': "0 0 400+60x10"},
        {6: [], 8: [({"severity": "critical"}, "The oldest outbox row has waited 12m 40s")]},
    ),
    Case(
        "HodeiProviderUnhealthy",
        {
            'hodei_provider_healthy{instance="a", provider="docker"}': "1 0x10",
            'hodei_provider_healthy{instance="a", provider="local"}': "1x10",
        },
        {5: [], 7: [({"severity": "warning", "provider": "docker"}, "Provider docker is unhealthy")]},
    ),
    Case(
        "HodeiJobsWaitLong",
        # Every job waited between 300 s and 30 minutes: p95 interpolated at 1725 s.
        {
            'hodei_job_queued_seconds_bucket{instance="a", le="300"}': "0x40",
            'hodei_job_queued_seconds_bucket{instance="a", le="1800"}': "0+10x40",
            'hodei_job_queued_seconds_bucket{instance="a", le="+Inf"}': "0+10x40",
        },
        {10: [], 20: [({"severity": "warning"}, "One job in twenty waits over 28m 45s to start")]},
    ),
    Case(
        "HodeiProviderLineStuck",
        # Every server reads the same line: counted once.
        {
            'hodei_provider_oldest_waiting_seconds{instance="a", provider="docker"}': "0 0 1900+60x10",
            'hodei_provider_oldest_waiting_seconds{instance="b", provider="docker"}': "0 0 1900+60x10",
            'hodei_provider_oldest_waiting_seconds{instance="a", provider="local"}': "0 30 60 0x10",
        },
        {
            6: [],
            8: [
                (
                    {"severity": "warning", "provider": "docker"},
                    "A job has waited 37m 40s in provider docker's line",
                )
            ],
        },
    ),
    Case(
        "HodeiJobsFailing",
        {
            'hodei_jobs_finished_total{instance="a", state="FAILED"}': "0+2x60",
            'hodei_jobs_finished_total{instance="a", state="SUCCEEDED"}': "0+1x60",
        },
        {
            5: [],
            45: [
                (
                    {"severity": "warning"},
                    "Over half of the jobs that ended in the last 30 minutes failed or timed out",
                )
            ],
        },
    ),
    Case(
        "HodeiJobsFailing",
        # All of them failed, but three in half an hour are too few to say so.
        {'hodei_jobs_finished_total{instance="a", state="FAILED"}': "0+0.1x60"},
        {45: []},
    ),
    Case(
        "HodeiProvisioningStepsFailing",
        {
            'hodei_saga_step_seconds_count{instance="a", saga_type="PROVISIONING", step="create_worker", '
            'outcome="failed"}': "0+1x30",
            'hodei_saga_step_seconds_count{instance="a", saga_type="PROVISIONING", step="create_worker", '
            'outcome="completed"}': "0+9x30",
        },
        {
            20: [
                (
                    {"severity": "warning", "saga_type": "PROVISIONING", "step": "create_worker"},
                    "Step create_worker of PROVISIONING sagas failed 15 times in 15 minutes",
                )
            ]
        },
    ),
    Case(
        "HodeiWorkersLost",
        # Each server counts the workers it declared lost: summed.
        {
            'hodei_workers_lost_total{instance="a", provider="kubernetes"}': "0+1x30",
            'hodei_workers_lost_total{instance="b", provider="kubernetes"}': "0x30",
            'hodei_workers_lost_total{instance="a", provider="docker"}': "0 1x30",
        },
        {
            20: [
                (
                    {"severity": "warning", "provider": "kubernetes"},
                    "15 workers of provider kubernetes were lost in 15 minutes",
                )
            ]
        },
    ),
    Case(
        "HodeiLogLinesLost",
        {'hodei_log_lines_lost_total{instance="a"}': "0 0 0 5x15", 'hodei_log_lines_lost_total{instance="b"}': "0x18"},
        {
            2: [],
            5: [({"severity": "critical", "instance": "a"}, "Server a could not store 5 lines of job output")],
            16: [],
        },
    ),
    Case(
        "HodeiWebhookMessagesFailed",
        {
            'hodei_webhook_messages{instance="a", webhook="chat", state="failed"}': "0 2x5",
            'hodei_webhook_messages{instance="a", webhook="chat", state="delivered"}': "40x6",
        },
        {0: [], 3: [({"severity": "warning", "webhook": "chat"}, "Webhook chat gave up on 2 messages")]},
    ),
    Case(
        "HodeiCronJobMissedRun",
        {'hodei_cron_job_late_seconds{instance="a", cron="nightly"}': "0 0 360x5"},
        {
            1: [],
            3: [
                (
                    {"severity": "warning", "cron": "nightly"},
                    "Cron job nightly has not started its job of 6m 0s ago",
                )
            ],
        },
    ),
    Case(
        "HodeiCronJobFailed",
        {
            'hodei_cron_job_last_run_state{instance="a", cron="nightly", state="FAILED"}': "1x5",
            'hodei_cron_job_last_run_state{instance="a", cron="nightly", state="SUCCEEDED"}': "0x5",
            'hodei_cron_job_last_run_state{instance="a", cron="hourly", state="SUCCEEDED"}': "1x5",
        },
        {2: [({"severity": "warning", "cron": "nightly"}, "The newest job of cron job nightly failed")]},
    ),
    Case(
        "HodeiServersOnSeveralVersions",
        {
            'hodei_build_info{instance="a", version="1.0"}': "1x90",
            'hodei_build_info{instance="b", version="1.1"}': "1x90",
            'hodei_build_info{instance="c", version="1.1"}': "1x90",
        },
        {30: [], 70: [({"severity": "warning"}, "The installation's servers run 2 versions")]},
    ),
]


def _description(alert: str, labels: dict[str, str]) -> str:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == alert]
    text: str = rule["annotations"]["description"]
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda found: labels[found.group(1)], text)


def _unit_tests() -> dict[str, Any]:
    """promtool's unit test file: a test group a case."""
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": f"{case.alert} {number}",
                "interval": "1m",
                "input_series": [{"series": series, "values": values} for series, values in case.series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": f"{minutes}m",
                        "alertname": case.alert,
                        "exp_alerts": [
                            {
                                "exp_labels": labels,
                                "exp_annotations": {
                                    "summary": summary,
                                    "description": _description(case.alert, labels),
                                },
                            }
                            for labels, summary in fired
                        ],
                    }
                    for minutes, fired in case.checks.items()
                ],
            }
            for number, case in enumerate(CASES)
        ],
    }


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_prometheus_reads_the_rules() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_each_alert_fires_when_it_should_and_says_so(tmp_path: Path) -> None:
    assert {case.alert for case in CASES if any(case.checks.values())} == {rule["alert"] for rule in alert_rules()}
    tests = tmp_path / "alerts.test.yml"
    tests.write_text(yaml.safe_dump(_unit_tests(), sort_keys=False))
    ran = _promtool("test", "rules", str(tests))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The run above can fail: an alert expected where none fires is a failure."""
    tests = tmp_path / "alerts.test.yml"
    wrong = _unit_tests()
    wrong["tests"] = wrong["tests"][:1]
    wrong["tests"][0]["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "critical"}}]
    tests.write_text(yaml.safe_dump(wrong, sort_keys=False))
    ran = _promtool("test", "rules", str(tests))
    assert ran.returncode == 1 and "FAILED" in ran.stdout + ran.stderr, ran.stdout + ran.stderr
