"""How streams, subjects, positions and ack tokens map onto Kafka (pure: no I/O).

- Each subject pattern of a stream is one topic. A literal subject is the topic of
  the same name; in a pattern with wildcards the token ``*`` is written ``_any``
  and the token ``>`` ``_all`` (``orders.>`` -> topic ``orders._all``). A record's
  subject is its key, so with several partitions one subject stays in order.
- A sequence is one integer naming topic, partition and offset:
  ``topic_id << 52 | partition << 40 | offset + 1``; the first topic of a stream
  (id 0) with one partition numbers its messages 1, 2, 3 like JetStream.
- An ack token names the stream, consumer, position and the delivery it settles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...core.errors import ConfigError, RequestError

ANY_TOKEN = "_any"
ALL_TOKEN = "_all"
MAX_TOPIC = 249  # Kafka's limit on topic names
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")

OFFSET_BITS = 40
PARTITION_BITS = 12
TOPIC_SHIFT = OFFSET_BITS + PARTITION_BITS
MAX_TOPIC_ID = (1 << 11) - 1  # sequences stay below 2**63 (proto opt_start_seq is uint64)
MAX_PARTITIONS = 1 << PARTITION_BITS

TOKEN_PREFIX = "k1"
TOKEN_SEPARATOR = "|"


def topic_for(pattern: str, *, setting: str) -> str:
    """The topic that stores the messages of one stream subject (pattern)."""
    tokens = [ANY_TOKEN if t == "*" else ALL_TOKEN if t == ">" else t for t in pattern.split(".")]
    topic = ".".join(tokens)
    if not _TOPIC_CHARS.fullmatch(topic) or len(topic) > MAX_TOPIC:
        raise ConfigError(
            setting,
            "cannot be a Kafka topic name: Kafka allows letters, digits, '.', '_' and '-', "
            f"at most {MAX_TOPIC} characters (the subject is the topic, '*' -> {ANY_TOKEN}, "
            f"'>' -> {ALL_TOKEN})",
            value=pattern,
            fix="use subjects of ASCII letters, digits, '_' and '-' tokens",
        )
    return topic


def encode_sequence(topic_id: int, partition: int, offset: int) -> int:
    return (topic_id << TOPIC_SHIFT) | (partition << OFFSET_BITS) | (offset + 1)


def decode_sequence(sequence: int) -> tuple[int, int, int]:
    """(topic_id, partition, offset) of a sequence; offset -1 for sequence 0."""
    return (
        sequence >> TOPIC_SHIFT,
        (sequence >> OFFSET_BITS) & (MAX_PARTITIONS - 1),
        (sequence & ((1 << OFFSET_BITS) - 1)) - 1,
    )


@dataclass(frozen=True, slots=True)
class Token:
    stream: str
    consumer: str
    topic: str
    partition: int
    offset: int
    delivery: int  # which delivery of the message this token settles

    def text(self) -> str:
        return TOKEN_SEPARATOR.join(
            (
                TOKEN_PREFIX,
                self.stream,
                self.consumer,
                self.topic,
                str(self.partition),
                str(self.offset),
                str(self.delivery),
            )
        )


def parse_token(text: str) -> Token:
    parts = text.split(TOKEN_SEPARATOR)
    if (
        len(parts) != 7
        or parts[0] != TOKEN_PREFIX
        or not all(p.isdigit() for p in parts[4:])
        or not all(parts[1:4])
    ):
        raise RequestError(
            "ack_token",
            "not an ack token of the kafka provider",
            value=text,
            fix="pass the ack_token of a message this broker delivered",
        )
    return Token(parts[1], parts[2], parts[3], int(parts[4]), int(parts[5]), int(parts[6]))


def group_id(stream: str, consumer: str) -> str:
    """The Kafka consumer group of a durable consumer (names are unique per stream)."""
    return f"{stream}.{consumer}"
