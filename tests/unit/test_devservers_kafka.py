"""The test Kafka server's argument errors name the setting, the value and the fix
(checked before anything is started or written)."""

from __future__ import annotations

from typing import Any

import pytest

from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.devservers.kafka import KafkaServer


@pytest.mark.parametrize(
    ("kwargs", "setting", "fix"),
    [
        ({"nodes": 2}, "KafkaServer nodes", "pass nodes=1"),
        ({"nodes": 1, "min_insync": 2}, "KafkaServer min_insync", "pass min_insync from 1"),
        ({"scram": ("app", "pa=ss")}, "KafkaServer scram", "choose a user and password"),
    ],
)
def test_bad_arguments_say_what_to_pass(kwargs: dict[str, Any], setting: str, fix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaServer(**kwargs)
    assert caught.value.setting == setting
    assert caught.value.fix.startswith(fix)
    assert "pa=ss" not in str(caught.value)  # a password is never shown
