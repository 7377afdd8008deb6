"""The cluster manifests: the permissions the provider needs, and the pod it expects."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

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


def alerted_metrics() -> set[str]:
    """Every metric an alert's expression reads, as the server names it (a histogram's
    ``_bucket`` and ``_count`` series by the histogram's name)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, "a selector without a metric's name"
            names.add(node.name)

    for rule in alert_rules():
        promql_parser.walk(promql_parser.parse(rule["expr"]), visit)  # ValueError when it is not PromQL
    return {_SERIES.sub("", name) for name in names}


def test_each_alert_is_promql_on_documented_metrics_and_says_what_it_is() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules) > 0
    readme = (DEPLOY.parent / "README.md").read_text()
    documented = set(re.findall(r"^\| `(hodei_[a-z_]+)", readme, re.MULTILINE))
    documented |= set(re.findall(r"`(hodei_[a-z_]+)(?:\{[a-z_,]+\})?`", readme))
    assert alerted_metrics() <= documented, alerted_metrics() - documented
    for rule in rules:
        assert rule["alert"].startswith("Hodei") and rule["labels"]["severity"] in ("warning", "critical")
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40
        # A label a description names must be one the expression keeps: all of them where it
        # aggregates nothing, else those of its `by (...)`.
        kept = {label.strip() for group in re.findall(r"by \(([^)]*)\)", rule["expr"]) for label in group.split(",")}
        aggregates = re.search(r"\b(sum|max|min|count|avg)\b", rule["expr"]) is not None
        for label in re.findall(r"\$labels\.(\w+)", str(rule["annotations"])):
            assert label in kept or not aggregates, (rule["alert"], label)


def test_a_rule_that_is_not_promql_is_refused() -> None:
    """The check above can fail: the parser refuses what Prometheus would."""
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_parser.parse("max by (provider) (hodei_provider_healthy == 0")
