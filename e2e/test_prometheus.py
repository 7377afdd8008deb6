"""A real Prometheus (Debian's) scraping a running server, with deploy/prometheus-rules.yml
loaded: every alert's expression and every panel's query of deploy/grafana-dashboard.json
runs on the server's own series without an error, the panels' main series are there, and
a healthy installation raises no alert."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from hodei.devdb import free_port
from hodei.testing import ServerProcess, eventually, wait_settled
from tests.test_deploy import RULES, alert_rules, dashboard_expressions

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_LOCAL_ENABLED": "0"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env, http=True) as process:
        yield process


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping ``server`` every second and evaluating the alerts as often."""
    home = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "hodei", "static_configs": [{"targets": [f"127.0.0.1:{server.http_port}"]}]},
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (home / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _answers(url), 60, what=f"Prometheus to answer (its log: {home / 'prometheus.log'})")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).ok
    except requests.ConnectionError:
        return False


def instant(url: str, expression: str) -> list[dict[str, Any]]:
    """The query's result now; fails on Prometheus' error."""
    answer = requests.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", (expression, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_prometheus_runs_every_alert_and_panel_on_the_servers_series(server: ServerProcess, prometheus: str) -> None:
    for code in (0, 3):
        ran = server.cli("job", "run", "--provider", "sim", "--command", "true", "--env", f"HODEI_SIM_EXIT_CODE={code}")
        wait_settled(server.database_url, ran.stdout.strip())
    # Three scrapes of the server, so that each rate has samples to go on.
    eventually(lambda: bool(instant(prometheus, 'count_over_time(up{job="hodei"}[1m]) >= 3')), 60)
    assert instant(prometheus, 'up{job="hodei"} == 1')

    for expression in dashboard_expressions(rate_interval="1m", shown="5m"):  # a minute-old server
        instant(prometheus, expression)
    ended = instant(prometheus, "sum by (state) (hodei_jobs_finished_total)")
    assert {series["metric"]["state"]: float(series["value"][1]) for series in ended} == {"SUCCEEDED": 1, "FAILED": 1}
    for panel in (
        "max by (provider) (hodei_provider_healthy)",
        "max by (provider) (hodei_provider_workers)",
        "max(hodei_outbox_backlog)",
        "sum by (instance) (hodei_workers_connected)",
        "min by (instance) (hodei_database_up)",
        "count by (version) (hodei_build_info)",
        "histogram_quantile(0.95, sum by (le) (rate(hodei_job_seconds_bucket[1m])))",
    ):
        assert instant(prometheus, panel), panel

    # Every rule evaluated on these series without an error, and none holds on a healthy server.
    def evaluated() -> list[dict[str, Any]]:
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    eventually(lambda: all(rule.get("lastEvaluation", "").startswith("2") for rule in evaluated()), 30)
    rules = evaluated()
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in alert_rules())
    assert [(rule["name"], rule["lastError"]) for rule in rules if rule["health"] != "ok"] == []
    assert requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"] == []
