"""The cluster manifests: the permissions the provider needs, and the pod it expects."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard as GrafanaDashboard

from tests.k8s_schema import problems

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def test_the_role_is_the_servers_in_the_workers_namespace() -> None:
    """What it allows is checked against the provider's own requests (test_kubernetes_provider)."""
    (role,) = by_kind("Role")
    assert role["metadata"]["namespace"] == "hodei-jobs-workers"
    (binding,) = by_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "hodei-server"


def test_the_server_deployment_runs_the_kubernetes_provider() -> None:
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "hodei-server"
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["HODEI_KUBERNETES_ENABLED"] == "1"
    assert env["HODEI_K8S_NAMESPACE"] == "hodei-jobs-workers"
    (service,) = by_kind("Service")
    assert env["HODEI_SERVER_HOST"].startswith(f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc")
    assert {doc["metadata"]["name"] for doc in by_kind("Namespace")} == {"hodei-jobs", "hodei-jobs-workers"}


def test_every_manifest_is_valid_for_the_kubernetes_api() -> None:
    checked = documents()
    assert {doc["kind"] for doc in checked} >= {"Namespace", "ServiceAccount", "Role", "Deployment", "Service"}
    for doc in checked:
        assert problems(doc) == [], doc["metadata"]["name"]


def test_the_checker_finds_what_the_api_would_refuse() -> None:
    (deployment,) = by_kind("Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Never"
    assert problems(typo) == [
        "Deployment.spec.template.spec.containers[0].imagePullPolicyy: no such field in V1Container"
    ]
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    assert problems(wrong_type) == ["Deployment.spec.replicas: int expected, got str"]
    nameless = copy.deepcopy(deployment)
    del nameless["spec"]["template"]["spec"]["containers"][0]["name"]
    (missing,) = problems(nameless)
    assert "V1Container" in missing
    assert "\nname\n" in missing


RULES = DEPLOY / "prometheus-rules.yml"
# What a histogram's or a counter's series add to the name of what they count.
_SERIES = re.compile(r"_(bucket|count|sum)$")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metrics_read(expressions: list[str]) -> set[str]:
    """Every metric the PromQL ``expressions`` read, as the server names it (a histogram's
    ``_bucket`` and ``_count`` series by the histogram's name)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, "a selector without a metric's name"
            names.add(node.name)

    for expression in expressions:
        promql_parser.walk(promql_parser.parse(expression), visit)  # ValueError when it is not PromQL
    return {_SERIES.sub("", name) for name in names}


def alerted_metrics() -> set[str]:
    return metrics_read([rule["expr"] for rule in alert_rules()])


def documented_metrics() -> set[str]:
    """The metrics the README's metric table names, in its rows' first cells."""
    readme = (DEPLOY.parent / "README.md").read_text()
    table = readme.split("| Metric | Kind | Meaning |", 1)[1].split("\n\n", 1)[0]
    return {name for row in table.splitlines()[2:] for name in re.findall(r"`(hodei_[a-z_]+)", row.split("|")[1])}


def kept_labels(expression: str) -> set[str] | None:
    """The labels a result of ``expression`` keeps: those of its `by (...)`; None (all of
    them) where it aggregates nothing."""
    if re.search(r"\b(sum|max|min|count|avg)\b", expression) is None:
        return None
    return {label.strip() for group in re.findall(r"by \(([^)]*)\)", expression) for label in group.split(",")}


def test_each_alert_is_promql_on_documented_metrics_and_says_what_it_is() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules) > 0
    documented = documented_metrics()
    assert alerted_metrics() <= documented, alerted_metrics() - documented
    for rule in rules:
        assert rule["alert"].startswith("Hodei") and rule["labels"]["severity"] in ("warning", "critical")
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40
        # A label a description names must be one the expression keeps.
        kept = kept_labels(rule["expr"])
        for label in re.findall(r"\$labels\.(\w+)", str(rule["annotations"])):
            assert kept is None or label in kept, (rule["alert"], label)


def test_a_rule_that_is_not_promql_is_refused() -> None:
    """The check above can fail: the parser refuses what Prometheus would."""
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_parser.parse("max by (provider) (hodei_provider_healthy == 0")


DASHBOARD = DEPLOY / "grafana-dashboard.json"


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return panels


def dashboard_queries() -> list[dict[str, Any]]:
    return [target for panel in dashboard_panels() for target in panel.get("targets", [])]


def dashboard_expressions(rate_interval: str = "5m", shown: str = "6h") -> list[str]:
    """Each panel's query as Prometheus gets it from Grafana: its ranges put in (the rate
    interval Grafana picks, and the range the dashboard shows)."""
    return [
        target["expr"].replace("$__rate_interval", rate_interval).replace("$__range", shown)
        for target in dashboard_queries()
    ]


def charted_metrics() -> set[str]:
    """Every metric a panel of deploy/grafana-dashboard.json reads."""
    return metrics_read(dashboard_expressions())


def test_the_dashboard_is_what_its_source_generates() -> None:
    """deploy/grafana-dashboard.json is built by tools/gen_dashboard.py (`just dashboard`)."""
    checked = subprocess.run(
        [sys.executable, str(DEPLOY.parent / "tools" / "gen_dashboard.py"), "--check"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_charts_every_documented_metric_with_promql() -> None:
    """Each query is PromQL on documented metrics; each documented metric is on a panel, so a
    new one is charted; a legend names only labels its query keeps."""
    assert charted_metrics() == documented_metrics(), charted_metrics() ^ documented_metrics()
    for target in dashboard_queries():
        kept = kept_labels(target["expr"])
        for label in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
            assert kept is None or label in kept, (target["expr"], label)


def test_the_dashboard_is_a_grafana_model_on_one_grid() -> None:
    """Grafana's own model reads it back whole; every panel has an id of its own, reads the
    data source the importer picks, and takes a place of its own on the 24-column grid."""
    kept = json.loads(DASHBOARD.read_text())
    assert json.loads(JSONEncoder().encode(GrafanaDashboard.from_json(kept))) == kept
    panels = dashboard_panels()
    assert len({panel["id"] for panel in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(place["x"], place["x"] + place["w"])
            for y in range(place["y"], place["y"] + place["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells
        if panel["type"] != "row":
            assert panel["description"] and panel["targets"], panel["title"]
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    (variable,) = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
