"""Manifests checked against the Kubernetes API's own types, offline: the ``kubernetes``
client's generated models carry every object's fields (``attribute_map``), their types
(``openapi_types``) and which are required (their constructors refuse a missing one).

A field the API does not know, a value of the wrong type or a missing required field
is a problem; the API server would refuse the first two with strict field validation
and the last one always.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

# (apiVersion, kind) -> the model of that object.
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("v1", "Pod"): "V1Pod",
    ("v1", "Secret"): "V1Secret",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
}
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "bytes": (str,),
}


def problems(document: dict[str, Any]) -> list[str]:
    """Everything wrong with one manifest; [] when the API would take it."""
    model = MODELS.get((document.get("apiVersion", ""), document.get("kind", "")))
    if model is None:
        return [f"unknown apiVersion/kind {document.get('apiVersion')}/{document.get('kind')}"]
    found = _check(document, model, document["kind"])
    if not found:
        try:  # the constructors check required fields and enumerations
            k8s.ApiClient()._ApiClient__deserialize(document, model)
        except ValueError as exc:
            found.append(f"{document['kind']}: {exc}")
    return found


def _check(value: Any, kind: str, path: str) -> list[str]:
    # The client writes containers as `List[T]` and `Dict[str, T]` (older ones `list[T]`, `dict(str, T)`).
    if kind[:5] in ("List[", "list["):
        if not isinstance(value, list):
            return [f"{path}: a list expected"]
        return [problem for i, item in enumerate(value) for problem in _check(item, kind[5:-1], f"{path}[{i}]")]
    if kind[:5] in ("Dict[", "dict("):
        if not isinstance(value, dict):
            return [f"{path}: a mapping expected"]
        inner = kind[5:-1].split(", ", 1)[1]
        return [problem for key, item in value.items() for problem in _check(item, inner, f"{path}.{key}")]
    if kind == "object":  # IntOrString, quantities, free-form
        return []
    if kind in _PRIMITIVES:
        wanted = _PRIMITIVES[kind]
        if isinstance(value, bool) and bool not in wanted:
            return [f"{path}: {kind} expected, got a boolean"]
        return [] if isinstance(value, wanted) else [f"{path}: {kind} expected, got {type(value).__name__}"]
    model = getattr(k8s, kind)
    if not isinstance(value, dict):
        return [f"{path}: an object ({kind}) expected"]
    fields = {json_name: name for name, json_name in model.attribute_map.items()}
    found = [f"{path}.{key}: no such field in {kind}" for key in value if key not in fields]
    for key, item in value.items():
        if key in fields and item is not None:
            found += _check(item, model.openapi_types[fields[key]], f"{path}.{key}")
    return found
