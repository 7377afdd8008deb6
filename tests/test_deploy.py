"""The cluster manifests: the permissions the provider needs, and the pod it expects."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

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
