"""A trigger's ``trigger_data`` picks the keys each pipeline run gets, in both encoders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2

from workflow_eventbus import ConfigError, Delivery, trigger_data
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.names import TRIGGER_DATA_KEYS
from workflow_eventbus.core.validation import validate_consumer
from workflow_eventbus.engine.trigger import data_keys, fill_trigger_struct

DELIVERY = Delivery(
    "S", "C", "orders.created", b'{"id": 7}', {"k": "v"}, 9, datetime.now(UTC), 2, "tok"
)


@pytest.mark.parametrize(
    "keys",
    [
        ("subject", "payload", "ack_token"),
        ("body",),
        ("headers", "delivery_count", "stream"),
        TRIGGER_DATA_KEYS,
    ],
)
def test_only_the_chosen_keys_and_both_encoders_agree(keys: tuple[str, ...]) -> None:
    chosen = data_keys(pb.ConsumerConfig(trigger_data=keys))
    data = trigger_data(DELIVERY, {"trace_id": "t"}, chosen)
    assert set(data) == {*keys, "trace_id"}
    full = trigger_data(DELIVERY)
    assert all(data[k] == full[k] for k in keys)
    direct = struct_pb2.Struct()
    fill_trigger_struct(DELIVERY, direct, {"trace_id": "t"}, chosen)
    expected = struct_pb2.Struct()
    expected.update(data)
    assert direct == expected


def test_unset_means_every_key() -> None:
    assert data_keys(pb.ConsumerConfig()) is None
    assert set(trigger_data(DELIVERY)) == set(TRIGGER_DATA_KEYS)


def test_an_unknown_key_names_the_setting_and_the_valid_ones() -> None:
    cfg = pb.ConsumerConfig(name="c", stream_name="S", trigger_data=["subject", "payloads"])
    with pytest.raises(ConfigError) as err:
        validate_consumer("c", cfg)
    text = str(err.value)
    assert 'eventbus.consumer "c": trigger_data[1]: is not a trigger data key' in text
    assert "(got 'payloads')" in text and "use some of: subject, payload, headers" in text
