"""Configuration from the environment: a wrong value is refused by name at start-up."""

from __future__ import annotations

import os

import pytest

from hodei import config
from hodei.admission import Capacity
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
    ],
)
def test_a_wrong_value_is_refused_by_name(name: str, value: str, refusal: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        config.load({name: value})
    assert refused.value.message == refusal


def test_the_console_port_defaults_to_8080_and_zero_turns_it_off() -> None:
    assert config.load({}).http_port == 8080
    assert config.load({"HODEI_HTTP_PORT": "0"}).http_port == 0
    assert config.load({"HODEI_GRPC_PORT": "50052"}).port == 50052


def test_local_workers_start_one_per_cpu_at_once_unless_told() -> None:
    assert config.load({}).max_starting == {"local": os.cpu_count() or 1}
    assert config.load({"HODEI_LOCAL_MAX_STARTING": "3"}).max_starting == {"local": 3}


def test_a_start_limit_leaves_free_only_the_starts_it_allows() -> None:
    assert Capacity(limit=16, in_use=5).free == 11
    assert Capacity(limit=16, in_use=5, starting=1, start_limit=2).free == 1
    assert Capacity(limit=16, in_use=5, starting=3, start_limit=2).free == 0
    assert Capacity(limit=4, in_use=4, starting=0, start_limit=2).free == 0
