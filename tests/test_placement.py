"""Node selectors and tolerations (hodei.domain.placement): written as Kubernetes users
write them, refused by Kubernetes' own rules before anything is written, and turned into
the pod spec's terms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hodei.domain.placement import (
    Toleration,
    canonical_tolerations,
    merged_selector,
    selector_of,
    selector_problems,
    tolerations_of,
)
from hodei.domain.spec import JobSpec
from hodei.errors import InvalidInput


def test_tolerations_are_read_as_kubectl_taint_writes_taints() -> None:
    assert [
        t.to_kubernetes() for t in tolerations_of(["dedicated=gpu:NoSchedule", "spot:NoExecute", "batch", "a=b"])
    ] == [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
        {"key": "batch", "operator": "Exists"},
        {"key": "a", "operator": "Equal", "value": "b"},
    ]
    # An empty value is a value (a taint `key=:NoSchedule` has one), not "any value".
    assert Toleration.parse("example.com/pool=:NoSchedule").to_kubernetes() == {
        "key": "example.com/pool",
        "operator": "Equal",
        "value": "",
        "effect": "NoSchedule",
    }
    assert canonical_tolerations([" dedicated = gpu : NoSchedule", "dedicated=gpu:NoSchedule", "spot"]) == (
        "dedicated=gpu:NoSchedule",
        "spot",
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (":NoSchedule", "a key is needed"),
        ("=gpu", "a key is needed"),
        ("dedicated=gpu:NoSchedul", "effect must be one of NoSchedule, PreferNoSchedule, NoExecute, got `NoSchedul`"),
        ("dedicated=g p u", "value `g p u` must be empty or at most 63"),
        ("-dedicated", "key `-dedicated` must be at most 63"),
        ("Example.com/pool", "key `Example.com/pool`: its prefix must be a DNS subdomain"),
        ("k" * 64, "must be at most 63"),
    ],
)
def test_a_toleration_kubernetes_would_refuse_is_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=r"^toleration `.*`: .*\(KEY\[=VALUE\]\[:EFFECT\]\)$") as refused:
        Toleration.parse(text)
    assert says in refused.value.message


def test_a_node_selector_is_read_from_terms_and_refused_where_kubernetes_would() -> None:
    assert selector_of(["disktype=ssd,topology.kubernetes.io/zone=eu-1a", "gpu="], "--node-selector") == {
        "disktype": "ssd",
        "topology.kubernetes.io/zone": "eu-1a",
        "gpu": "",
    }
    assert selector_of(["a=1", "a=1"], "--node-selector") == {"a": "1"}
    with pytest.raises(InvalidInput, match=r"^malformed --node-selector term `disktype`: expected KEY=VALUE$"):
        selector_of(["disktype"], "--node-selector")
    with pytest.raises(InvalidInput, match=r"^--node-selector: disktype is given twice, as ssd and as hdd$"):
        selector_of(["disktype=ssd", "disktype=hdd"], "--node-selector")
    with pytest.raises(InvalidInput, match=r"^HODEI_K8S_NODE_SELECTOR: node selector value `a b` must be empty"):
        selector_of(["x=a b"], "HODEI_K8S_NODE_SELECTOR")
    assert selector_problems({f"k{n}": "v" for n in range(33)}) == ["33 node selector terms; the limit is 32"]


def test_a_jobs_spec_with_a_bad_placement_is_refused_with_every_problem() -> None:
    spec = JobSpec(
        name="x",
        command="true",
        timeout_seconds=60,
        node_selector={"disk type": "ssd"},
        tolerations=("dedicated=gpu:Never",),
    )
    problems = spec.problems()
    assert any(p.startswith("node selector key `disk type` must be") for p in problems), problems
    assert any(p.startswith("toleration `dedicated=gpu:Never`: effect must be one of") for p in problems), problems


def test_a_job_adds_to_the_servers_node_selector_but_cannot_contradict_it() -> None:
    server = {"pool": "batch"}
    assert merged_selector(server, {"disktype": "ssd", "pool": "batch"}) == {"pool": "batch", "disktype": "ssd"}
    with pytest.raises(
        InvalidInput,
        match=r"^node selector pool=gpu conflicts with this server's pool=batch \(HODEI_K8S_NODE_SELECTOR: its pods"
        r" run only on such nodes\)$",
    ):
        merged_selector(server, {"pool": "gpu"})


_NAMES = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?\Z")
_PREFIXES = st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,10}[a-z0-9])?\Z")


@given(
    key=st.one_of(_NAMES, st.builds(lambda p, n: f"{p}/{n}", _PREFIXES, _NAMES)),
    value=st.one_of(st.none(), st.just(""), _NAMES),
    effect=st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
)
def test_a_toleration_reads_back_as_it_is_written(key: str, value: str | None, effect: str) -> None:
    toleration = Toleration(key, value, effect)
    assert toleration.problems() == []
    assert Toleration.parse(str(toleration)) == toleration
