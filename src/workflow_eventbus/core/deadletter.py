"""The dead-letter wire format: where exhausted messages go and what they carry.

A message that failed ``max_deliver`` times is copied, payload unchanged, to
``eventbus.deadletter.<stream>.<consumer>`` (kept by the shared stream
``EVENTBUS_DEADLETTER``) or to the consumer's own ``dead_letter_subject``, with
the ``Eventbus-Dlq-*`` headers below; then the original is terminated. The
copy's ``Nats-Msg-Id`` is derived from the source position, so a copy made
twice (a crash between copy and term) is stored once. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .headers import MSG_ID_HEADER

DEAD_LETTER_STREAM = "EVENTBUS_DEADLETTER"
DEAD_LETTER_PREFIX = "eventbus.deadletter"

# Headers carried by a dead-lettered copy.
DLQ_SUBJECT = "Eventbus-Dlq-Subject"
DLQ_STREAM = "Eventbus-Dlq-Stream"
DLQ_CONSUMER = "Eventbus-Dlq-Consumer"
DLQ_SEQUENCE = "Eventbus-Dlq-Sequence"
DLQ_DELIVERIES = "Eventbus-Dlq-Delivery-Count"
DLQ_ERROR = "Eventbus-Dlq-Error"
DLQ_PUBLISHED_AT = "Eventbus-Dlq-Published-At"
DLQ_MSG_ID = "Eventbus-Dlq-Msg-Id"  # the original Nats-Msg-Id, if it had one
DLQ_HEADERS = (
    DLQ_SUBJECT,
    DLQ_STREAM,
    DLQ_CONSUMER,
    DLQ_SEQUENCE,
    DLQ_DELIVERIES,
    DLQ_ERROR,
    DLQ_PUBLISHED_AT,
    DLQ_MSG_ID,
)
MAX_ERROR_TEXT = 1024  # characters of the handler's error kept in DLQ_ERROR


def default_dead_letter_subject(stream: str, consumer: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{stream}.{consumer}"


def dead_letter_filter(stream: str = "", consumer: str = "") -> str:
    """The subject filter of the default dead letters of ``stream``/``consumer``."""
    if stream and consumer:
        return f"{DEAD_LETTER_PREFIX}.{stream}.{consumer}"
    if stream:
        return f"{DEAD_LETTER_PREFIX}.{stream}.*"
    return f"{DEAD_LETTER_PREFIX}.>"


def dead_letter_msg_id(stream: str, consumer: str, sequence: int) -> str:
    """The dedup id of the dead-letter copy of one source message."""
    return f"eventbus-dlq:{stream}:{consumer}:{sequence}"


@dataclass(slots=True)
class DeadLetter:
    """One dead-lettered message, as stored in the dead-letter stream."""

    dlq_stream: str
    dlq_sequence: int
    dlq_subject: str
    subject: str  # where it was originally published
    stream: str
    consumer: str
    sequence: int  # its sequence in the source stream
    delivery_count: int
    error: str
    published_at: str
    headers: dict[str, str] = field(default_factory=dict)  # original headers
    payload: bytes = b""

    @classmethod
    def parse(
        cls,
        dlq_stream: str,
        dlq_sequence: int,
        dlq_subject: str,
        headers: Mapping[str, str],
        payload: bytes,
    ) -> DeadLetter:
        def number(key: str) -> int:
            text = headers.get(key, "")
            return int(text) if text.isdigit() else 0

        original = {k: v for k, v in headers.items() if k not in DLQ_HEADERS}
        original.pop(MSG_ID_HEADER, None)  # the copy's own dedup id
        if headers.get(DLQ_MSG_ID):
            original[MSG_ID_HEADER] = headers[DLQ_MSG_ID]
        return cls(
            dlq_stream=dlq_stream,
            dlq_sequence=dlq_sequence,
            dlq_subject=dlq_subject,
            subject=headers.get(DLQ_SUBJECT, ""),
            stream=headers.get(DLQ_STREAM, ""),
            consumer=headers.get(DLQ_CONSUMER, ""),
            sequence=number(DLQ_SEQUENCE),
            delivery_count=number(DLQ_DELIVERIES),
            error=headers.get(DLQ_ERROR, ""),
            published_at=headers.get(DLQ_PUBLISHED_AT, ""),
            headers=original,
            payload=payload,
        )

    def matches(self, stream: str, consumer: str) -> bool:
        return (not stream or self.stream == stream) and (not consumer or self.consumer == consumer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dlq_stream": self.dlq_stream,
            "dlq_sequence": self.dlq_sequence,
            "subject": self.subject,
            "stream": self.stream,
            "consumer": self.consumer,
            "sequence": self.sequence,
            "delivery_count": self.delivery_count,
            "error": self.error,
            "published_at": self.published_at,
            "headers": self.headers,
            "payload_bytes": len(self.payload),
        }

    def original_headers(self) -> dict[str, str]:
        """The headers to republish with: the original ones, without the old msg id
        (so the broker's dedup cannot drop the replay)."""
        return {k: v for k, v in self.headers.items() if k != MSG_ID_HEADER}
