"""Wire details: header sizes, ack bodies and tokens, Delivery from a JetStream message."""

from __future__ import annotations

from nats.aio.msg import Msg

from ...errors import RequestError
from ..base import AckAction, Delivery

_HEADER_LINE_OVERHEAD = 4  # ": " and CRLF
_HEADER_BLOCK_OVERHEAD = 12  # "NATS/1.0\r\n" + final CRLF
_ACK_BODY = {
    AckAction.ACK: b"+ACK",
    AckAction.NAK: b"-NAK",
    AckAction.TERM: b"+TERM",
    AckAction.IN_PROGRESS: b"+WPI",
}


def header_size(headers: dict[str, str]) -> int:
    total = _HEADER_BLOCK_OVERHEAD
    for key, value in headers.items():
        total += len(key) + len(value) + _HEADER_LINE_OVERHEAD
    return total


def delivery(msg: Msg, stream: str, consumer: str) -> Delivery:
    meta = msg.metadata
    return Delivery(
        stream=meta.stream or stream,
        consumer=meta.consumer or consumer,
        subject=msg.subject,
        payload=msg.data,
        headers=dict(msg.headers) if msg.headers else {},
        sequence=meta.sequence.stream,
        published_at=meta.timestamp,
        delivery_count=meta.num_delivered,
        ack_token=msg.reply,
    )


def ack_body(action: AckAction, delay: float | None) -> bytes:
    if action is AckAction.NAK and delay:
        if delay < 0:
            raise RequestError("delay", "must be zero or positive", value=delay, fix='e.g. "5s"')
        return b'-NAK {"delay": %d}' % round(delay * 1e9)
    return _ACK_BODY[AckAction(action)]


def check_token(token: str) -> None:
    if not token.startswith("$JS.") or ".ACK." not in token:
        raise RequestError(
            "ack_token",
            "not a NATS JetStream ack token",
            value=token[:80],
            fix="pass the ack_token of a message delivered by a nats broker, unchanged",
        )
