"""Configuration from the environment: a wrong value is refused by name at start-up."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from uuid import uuid4

import pytest

from hodei import config
from hodei.admission import Capacity
from hodei.domain.provider import ResourceLimits, resource_limits
from hodei.errors import InvalidInput


@pytest.mark.parametrize(
    ("name", "value", "refusal"),
    [
        ("HODEI_GRPC_PORT", "70000", "HODEI_GRPC_PORT must be a port, 1 to 65535, got `70000`"),
        ("HODEI_GRPC_PORT", "1.5", "HODEI_GRPC_PORT must be a port, 1 to 65535, got `1.5`"),
        ("HODEI_GRPC_PORT", "0", "HODEI_GRPC_PORT must be a port, 1 to 65535, got `0`"),
        ("HODEI_HTTP_PORT", "-1", "HODEI_HTTP_PORT must be 0 (off) or a port, 1 to 65535, got `-1`"),
        ("HODEI_HTTP_PORT", "web", "HODEI_HTTP_PORT must be 0 (off) or a port, 1 to 65535, got `web`"),
        ("HODEI_METRICS_PUBLIC", "maybe", "HODEI_METRICS_PUBLIC must be 1 or 0, got `maybe`"),
        ("HODEI_LOCAL_MAX_STARTING", "-1", "HODEI_LOCAL_MAX_STARTING must be 0 or more, got `-1`"),
        ("HODEI_LOCAL_MAX_STARTING", "two", "HODEI_LOCAL_MAX_STARTING must be a number, got `two`"),
        ("HODEI_IMAGE_PULL_TIMEOUT", "-5", "HODEI_IMAGE_PULL_TIMEOUT must be 0 or more, got `-5`"),
        ("HODEI_IMAGE_PULL_TIMEOUT", "10m", "HODEI_IMAGE_PULL_TIMEOUT must be a number, got `10m`"),
        ("HODEI_QUEUE_ORDER", "lifo", "HODEI_QUEUE_ORDER must be `fifo` or `fair`, got `lifo`"),
        ("HODEI_QUEUE_FAIR_WINDOW", "-1", "HODEI_QUEUE_FAIR_WINDOW must be 0 or more, got `-1`"),
        ("HODEI_LOCAL_MAX_WORKERS", "0.5", "HODEI_LOCAL_MAX_WORKERS must be a whole number, got `0.5`"),
        ("HODEI_RELAY_BATCH", "2.5", "HODEI_RELAY_BATCH must be a whole number, got `2.5`"),
        ("HODEI_LOCAL_MAX_STARTING", "1.5", "HODEI_LOCAL_MAX_STARTING must be a whole number, got `1.5`"),
        (
            "HODEI_DB_MAX_CONNECTIONS",
            "8",
            "HODEI_DB_MAX_CONNECTIONS must be at least 16, got `8`: in a burst the server's threads would wait",
        ),
        ("HODEI_DB_MAX_CONNECTIONS", "many", "HODEI_DB_MAX_CONNECTIONS must be a number, got `many`"),
        (
            "HODEI_WORKER_MAX_PROCESSES",
            "8",
            "HODEI_WORKER_MAX_PROCESSES must be 0 (no limit) or at least 32: a worker's agent has a dozen threads",
        ),
        ("HODEI_WORKER_MAX_PROCESSES", "-1", "HODEI_WORKER_MAX_PROCESSES must be 0 or more, got `-1`"),
        (
            "HODEI_HEARTBEAT_TIMEOUT",
            "2",
            "HODEI_HEARTBEAT_TIMEOUT (2s) must be longer than HODEI_HEARTBEAT_INTERVAL (2s): "
            "every worker would be lost between two of its heartbeats",
        ),
        (
            "HODEI_HEARTBEAT_INTERVAL",
            "15",
            "HODEI_HEARTBEAT_TIMEOUT (10s) must be longer than HODEI_HEARTBEAT_INTERVAL (15s)",
        ),
        # Past 100 years a thread's wait or a date overflowed (the retention thread died).
        (
            "HODEI_RETENTION_INTERVAL",
            "1e300",
            "HODEI_RETENTION_INTERVAL must be at most 3153600000 seconds (100 years)",
        ),
        ("HODEI_REGISTRATION_TIMEOUT", "1e12", "HODEI_REGISTRATION_TIMEOUT must be at most 3153600000 seconds"),
        ("HODEI_LOCAL_MAX_WORKERS", "1e300", "HODEI_LOCAL_MAX_WORKERS must be at most 2147483647, got `1e300`"),
        ("HODEI_RELAY_BATCH", "99999999999999999999", "HODEI_RELAY_BATCH must be at most 2147483647"),
        ("HODEI_MAX_LOG_BYTES", "1e19", "HODEI_MAX_LOG_BYTES must be at most 9223372036854775807, got `1e19`"),
        ("HODEI_MAX_DISK_BYTES", "2e15", "HODEI_MAX_DISK_BYTES must be at most 1125899906842624, got `2e15`"),
        ("HODEI_MAX_DISK_BYTES", "-1", "HODEI_MAX_DISK_BYTES must be"),
        ("HODEI_K8S_NAMESPACE", "Bad_NS", "HODEI_K8S_NAMESPACE must be a namespace's name: 1 to 63 lowercase"),
        ("HODEI_K8S_NAMESPACE", "-jobs", "beginning and ending with a letter or digit; got `-jobs`"),
        ("HODEI_K8S_NAMESPACE", "a" * 64, "HODEI_K8S_NAMESPACE must be a namespace's name"),
        ("HODEI_K8S_NODE_SELECTOR", "pool", "malformed HODEI_K8S_NODE_SELECTOR term `pool`: expected KEY=VALUE"),
        ("HODEI_K8S_NODE_SELECTOR", "pool=a b", "HODEI_K8S_NODE_SELECTOR: node selector value `a b` must be"),
        ("HODEI_K8S_TOLERATIONS", "a:NoSchedule,b:Never", "HODEI_K8S_TOLERATIONS: toleration `b:Never`: effect must"),
        ("HODEI_MAX_CPUS", "300", "HODEI_MAX_CPUS must be at most 256 cores, got `300`"),
        ("HODEI_DEFAULT_MEMORY_BYTES", "1.5", "HODEI_DEFAULT_MEMORY_BYTES must be a whole number, got `1.5`"),
        ("HODEI_K8S_JOB_SERVICE_ACCOUNTS", "reader,Admin", "HODEI_K8S_JOB_SERVICE_ACCOUNTS: service account `Admin`"),
        ("HODEI_K8S_SERVICE_ACCOUNT", "Hodei_Workers", "HODEI_K8S_SERVICE_ACCOUNT: service account `Hodei_Workers`"),
        # It ended the server with psycopg's traceback; the refusal quotes nothing of it (a password).
        ("DATABASE_URL", "s3cret-nonsense", "DATABASE_URL is neither a URL nor a key=value connection string"),
        ("DATABASE_URL", "postgres://u:s3cret@h/db?connect_timeout=abc", "DATABASE_URL's connect_timeout (or PGC"),
        ("PGCONNECT_TIMEOUT", "ten", "DATABASE_URL's connect_timeout (or PGCONNECT_TIMEOUT) must be a whole number"),
        ("DATABASE_URL", "postgres://h/db?tcp_user_timeout=-1", "tcp_user_timeout (or PGCONNECT_TIMEOUT) must be a"),
        (
            "HODEI_K8S_IMAGE_PULL_POLICY",
            "Sometimes",
            "HODEI_K8S_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never, got `Sometimes`",
        ),
    ],
)
def test_a_wrong_value_is_refused_by_name(name: str, value: str, refusal: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        config.load({name: value})
    assert refusal in refused.value.message
    assert "s3cret" not in refused.value.message


def test_the_servers_nodes_are_read_as_kubectl_writes_labels_and_taints() -> None:
    loaded = config.load(
        {
            "HODEI_K8S_NODE_SELECTOR": "pool=batch, disktype=ssd",
            "HODEI_K8S_TOLERATIONS": "dedicated=batch:NoSchedule,spot",
        }
    ).kubernetes
    assert loaded.node_selector == {"pool": "batch", "disktype": "ssd"}
    assert [str(toleration) for toleration in loaded.tolerations] == ["dedicated=batch:NoSchedule", "spot"]
    assert (config.load({}).kubernetes.node_selector, config.load({}).kubernetes.tolerations) == ({}, ())
    accounts = config.load({"HODEI_K8S_JOB_SERVICE_ACCOUNTS": " uploader, s3-reader,,uploader"}).kubernetes
    assert (accounts.job_service_accounts, config.load({}).kubernetes.job_service_accounts) == (
        ("s3-reader", "uploader"),
        (),
    )
    assert config.load({"HODEI_K8S_SERVICE_ACCOUNT": " hodei-workers "}).kubernetes.service_account == "hodei-workers"


def test_a_default_request_past_the_servers_most_stops_it() -> None:
    bounds = config.load({"HODEI_DEFAULT_CPUS": "0.5", "HODEI_MAX_MEMORY_BYTES": "1e9"}).job_bounds
    assert (bounds.default_cpus, bounds.max_cpus, bounds.max_memory_bytes) == (0.5, 0.0, 10**9)
    with pytest.raises(InvalidInput, match=r"HODEI_DEFAULT_CPUS \(2\) is past HODEI_MAX_CPUS \(1\)"):
        config.load({"HODEI_DEFAULT_CPUS": "2", "HODEI_MAX_CPUS": "1"})


def test_counts_are_whole_numbers_in_any_notation_and_namespaces_kubernetes_names() -> None:
    env = {"HODEI_MAX_LOG_BYTES": "1e9", "HODEI_LOCAL_MAX_WORKERS": "4.0", "HODEI_K8S_NAMESPACE": "ci-7"}
    loaded = config.load(env)
    assert (loaded.max_log_bytes, loaded.max_workers["local"], loaded.kubernetes.namespace) == (10**9, 4, "ci-7")
    assert (
        config.load({}).database_connections,
        config.load({"HODEI_DB_MAX_CONNECTIONS": "16"}).database_connections,
    ) == (
        60,
        16,
    )
    timing = config.load({"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "0.6"}).timing
    assert (timing.heartbeat_interval, timing.heartbeat_timeout) == (0.5, 0.6)


def test_local_jobs_run_as_a_user_this_host_knows() -> None:
    """An unknown user failed every local job ("failed before registering"), not the start."""
    local = {"HODEI_LOCAL_ENABLED": "1"}
    for value, run_as in (("server", None), ("nobody", "nobody"), ("65534", "65534"), ("1000:1000", "1000:1000")):
        assert config.load({**local, "HODEI_LOCAL_RUN_AS": value}).local_run_as == run_as
    with pytest.raises(InvalidInput) as refused:
        config.load({**local, "HODEI_LOCAL_RUN_AS": "nosuchuser"})
    assert refused.value.message == "HODEI_LOCAL_RUN_AS=nosuchuser: no such user on this host"
    with pytest.raises(InvalidInput) as refused:
        config.load({"HODEI_LOCAL_RUN_AS": "1000:staff"})
    assert refused.value.message == (
        "HODEI_LOCAL_RUN_AS must be a user name, uid, uid:gid, a range of uids FIRST-LAST or `server`, got `1000:staff`"
    )
    assert config.load({"HODEI_LOCAL_RUN_AS": "nosuchuser"}).local_run_as == "nosuchuser"  # no local provider here
    with pytest.raises(InvalidInput, match="HODEI_LOCAL_RUN_AS=no-such-user: no such user"):
        config.load({**local, "HODEI_LOCAL_RUN_AS": "no-such-user"})  # a name with a dash is a name


def test_local_jobs_may_each_run_as_a_uid_of_their_own_no_account_has() -> None:
    assert config.load({"HODEI_LOCAL_RUN_AS": "61184-65519"}).local_run_as == range(61184, 65520)
    refusals = {
        "5-1": "a range of uids is FIRST-LAST, 1 <= FIRST <= LAST <= 2147483646",
        "0-10": "a range of uids is FIRST-LAST, 1 <= FIRST",
        "1-20000": "holds ids of this host's accounts: daemon (1), bin (2)",
        "50-50": "holds ids of this host's accounts: group staff (50)",
        "61184-61187": "has 4 uids for HODEI_LOCAL_MAX_WORKERS=16 local jobs at once",
    }
    for value, refusal in refusals.items():
        with pytest.raises(InvalidInput) as refused:
            config.load({"HODEI_LOCAL_RUN_AS": value})
        assert refusal in refused.value.message, refused.value.message
    few = {"HODEI_LOCAL_RUN_AS": "61184-61187", "HODEI_LOCAL_MAX_WORKERS": "4"}
    assert config.load(few).local_run_as == range(61184, 61188)


def test_the_console_port_defaults_to_8080_and_zero_turns_it_off() -> None:
    assert config.load({}).http_port == 8080
    assert config.load({"HODEI_HTTP_PORT": "0"}).http_port == 0
    assert config.load({"HODEI_GRPC_PORT": "50052"}).port == 50052


def test_an_image_pull_has_ten_minutes_more_unless_told() -> None:
    assert config.load({}).timing.image_pull_timeout == 600
    assert config.load({"HODEI_IMAGE_PULL_TIMEOUT": "0"}).timing.image_pull_timeout == 0  # none: 90 s to create


def test_the_queue_keeps_submission_order_unless_told_to_be_fair() -> None:
    assert config.load({}).fair_window is None
    assert config.load({"HODEI_QUEUE_FAIR_WINDOW": "60"}).fair_window is None
    assert config.load({"HODEI_QUEUE_ORDER": "fair"}).fair_window == 600
    assert config.load({"HODEI_QUEUE_ORDER": "Fair", "HODEI_QUEUE_FAIR_WINDOW": "0"}).fair_window == 0


def test_local_workers_start_one_per_cpu_at_once_unless_told() -> None:
    assert config.load({}).max_starting == {"local": os.cpu_count() or 1}
    assert config.load({"HODEI_LOCAL_MAX_STARTING": "3"}).max_starting == {"local": 3}


def test_a_start_limit_leaves_free_only_the_starts_it_allows() -> None:
    assert Capacity(limit=16, in_use=5).free == 11
    assert Capacity(limit=16, in_use=5, starting=1, start_limit=2).free == 1
    assert Capacity(limit=16, in_use=5, starting=3, start_limit=2).free == 0
    assert Capacity(limit=4, in_use=4, starting=0, start_limit=2).free == 0
    assert Capacity(limit=16, in_use=5, disabled=True).free == 0  # `provider disable`: its queue waits


def test_a_providers_resources_hold_the_jobs_in_line_until_the_first_that_does_not_fit() -> None:
    """No backfill: a job behind one that does not fit waits with it; one that never fits
    (asks for more than the provider has) is passed over; fractions of a core add up
    whatever floating point makes of them."""
    a, b, c, d = (uuid4() for _ in range(4))
    capacity = Capacity(limit=16, in_use=3, resources=ResourceLimits(0.6, 2**30), cpu_in_use=0.3, memory_in_use=2**29)
    assert capacity.fitting([(a, 0.1, 0), (b, 0.2, 2**29), (c, 0.1, 0)]) == [a, b]
    assert capacity.fitting([(a, 5.0, 0), (b, 0.1, 0), (c, 0.0, 2**30), (d, 0.0, 1)]) == [b]
    assert capacity.fitting([(a, 0.0, 2**29 + 1), (b, 0.0, 0)]) == []
    unlimited = Capacity(limit=16, in_use=0)
    assert unlimited.fitting([(a, 256.0, 2**40), (b, 0.0, 0)]) == [a, b]
    assert not unlimited.resources.any and unlimited.holds(10**6, 2**60)


def test_a_providers_resource_limits_are_set_lifted_and_refused_in_words() -> None:
    limits = resource_limits(ResourceLimits(), 4.0, None)
    assert limits == ResourceLimits(4.0, None) and limits.text() == "4 CPU"
    limits = resource_limits(limits, None, 8 * 2**30)
    assert limits == ResourceLimits(4.0, 8 * 2**30) and limits.text() == "4 CPU, 8.0 GiB memory"
    assert resource_limits(limits, 0.0, None) == ResourceLimits(None, 8 * 2**30)  # 0 (none): no limit
    assert limits.beyond(4.0, 8 * 2**30) is None
    beyond = "it asks for 6 CPU, more than its 4 and 9.0 GiB memory, more than its 8.0 GiB"
    assert limits.beyond(6.0, 9 * 2**30) == beyond
    for cpu, memory, words in (
        (-1.0, None, "cpus must be between 0 (no limit) and 1e+06, got -1"),
        (math.inf, None, "cpus must be between"),
        (math.nan, None, "cpus must be between"),
        (None, -1, "memory must be between 0 (no limit)"),
        (None, 2**61, "memory must be between 0 (no limit)"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(words)):
            resource_limits(limits, cpu, memory)


def _readme_configuration() -> list[tuple[list[str], list[str]]]:
    """The README's configuration table: each row's variables and the literal defaults
    of its second column (backquoted; prose such as "none" is not one)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("| Variable | Default | Meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        names, defaults = line.strip("|").split("|")[:2]
        rows.append((re.findall(r"`([A-Z][A-Z0-9_]+)`", names), re.findall(r"`([^`]*)`", defaults)))
    return rows


def test_the_readme_lists_every_variable_with_its_default() -> None:
    rows = _readme_configuration()
    listed = [name for names, _ in rows for name in names]
    assert sorted(listed) == sorted(config.VARIABLES)
    compared = 0
    for names, defaults in rows:
        # A row whose defaults are one literal per variable, in order: they must be the code's.
        if len(defaults) == len(names):
            for name, default in zip(names, defaults, strict=True):
                if config.VARIABLES[name][0]:
                    assert config.VARIABLES[name][0] == default, name
                    compared += 1
    assert compared >= len(config.VARIABLES) // 2, compared
