"""Advisory lock keys: per consumer (bit-identical to the Go plugin's) and our own.

The Go plugin hashes ``stream + "\\x00" + consumer`` with 64-bit FNV-1a and uses
the result, read as a signed two's-complement int64, as the key of
``pg_try_advisory_lock``. Using the same key lets Go and Python processes
sharing one database exclude each other on the same durable.

Our other locks use the two-int4 form, a separate key space in PostgreSQL: a
class (four ASCII letters) and the signed CRC-32 of what is locked.
"""

from __future__ import annotations

import zlib

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1

MIGRATE_CLASS = 0x4556424D  # "EVBM": migrations of one schema
SWEEP_CLASS = 0x45564253  # "EVBS": the retention sweep of one schema
PUBLISH_CLASS = 0x45564250  # "EVBP": publishers of one stream


def fnv1a64(data: bytes) -> int:
    value = FNV64_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV64_PRIME) & _MASK
    return value


def consumer_lock_key(stream: str, consumer: str) -> int:
    """Signed int64 advisory lock key of one durable consumer."""
    value = fnv1a64(stream.encode() + b"\x00" + consumer.encode())
    return value - (1 << 64) if value >= 1 << 63 else value


def crc_key(text: str) -> int:
    """Signed CRC-32 of ``text``: the second half of a two-int4 key."""
    crc = zlib.crc32(text.encode())
    return crc - 2**32 if crc >= 2**31 else crc


def publish_lock_key(schema: str, stream: str) -> int:
    """Second half of the publish lock of one stream (first half: PUBLISH_CLASS).

    Two streams sharing a CRC only share the lock: slower, never wrong.
    """
    return crc_key(f"{schema}\x00{stream}")
