"""Configuration from the environment: a wrong value is refused by name at start-up."""

from __future__ import annotations

import pytest

from hodei import config
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
