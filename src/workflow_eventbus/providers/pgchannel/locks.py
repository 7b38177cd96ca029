"""Per-consumer advisory lock keys, bit-identical to the Go plugin's.

The Go plugin hashes ``stream + "\\x00" + consumer`` with 64-bit FNV-1a and uses
the result, read as a signed two's-complement int64, as the key of
``pg_try_advisory_lock``. Using the same key lets Go and Python processes
sharing one database exclude each other on the same durable.
"""

from __future__ import annotations

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    value = FNV64_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV64_PRIME) & _MASK
    return value


def consumer_lock_key(stream: str, consumer: str) -> int:
    """Signed int64 advisory lock key of one durable consumer."""
    value = fnv1a64(stream.encode() + b"\x00" + consumer.encode())
    return value - (1 << 64) if value >= 1 << 63 else value
