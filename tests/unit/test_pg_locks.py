"""Advisory lock keys: the per-consumer one is bit-identical to the Go plugin's."""

from __future__ import annotations

import pytest

from workflow_eventbus.providers.pgchannel.locks import (
    MIGRATE_CLASS,
    PUBLISH_CLASS,
    SWEEP_CLASS,
    consumer_lock_key,
    crc_key,
    fnv1a64,
    publish_lock_key,
)


@pytest.mark.parametrize(
    ("stream", "consumer", "key"),
    [
        ("stream-x", "consumer-y", -6255676891020711778),
        ("BMW_FULFILLMENT", "bmw-settlement-runner", -7738122251132644421),
    ],
)
def test_reference_vectors(stream: str, consumer: str, key: int) -> None:
    assert consumer_lock_key(stream, consumer) == key


def test_fnv1a64_known_values() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C


def test_separator_matters_and_range_is_int64() -> None:
    assert consumer_lock_key("ab", "c") != consumer_lock_key("a", "bc")
    for pair in (("a", "b"), ("S", "durable"), ("ORDERS", "shipper")):
        assert -(2**63) <= consumer_lock_key(*pair) < 2**63


def test_publish_keys_are_int4_per_schema_and_stream() -> None:
    keys = {publish_lock_key(schema, stream) for schema in ("a", "b") for stream in ("S", "T")}
    assert len(keys) == 4
    assert all(-(2**31) <= k < 2**31 for k in keys)
    assert publish_lock_key("a", "S") == publish_lock_key("a", "S")
    assert crc_key("123456789") == 0xCBF43926 - 2**32  # the CRC-32 check value, signed
    assert len({MIGRATE_CLASS, SWEEP_CLASS, PUBLISH_CLASS}) == 3
