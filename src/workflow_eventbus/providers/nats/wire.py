"""Wire details: header sizes, ack bodies and tokens, Delivery from a JetStream message."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from operator import itemgetter

from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from ...core.errors import RequestError
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


# Positions in the ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.
# <consumer seq>.<timestamp ns>.<pending>, or with <domain>.<account hash> after ACK.
_V1_TOKENS = 9
_V2_MIN_TOKENS = 11
_Picker = Callable[[list[str]], tuple[str, str, str, str, str]]
_V1_FIELDS: _Picker = itemgetter(2, 3, 4, 5, 7)  # stream, consumer, delivered, seq, timestamp
_V2_FIELDS: _Picker = itemgetter(4, 5, 6, 7, 9)


def delivery(msg: Msg, stream: str, consumer: str) -> Delivery:
    # Parsed here rather than through msg.metadata (a frozen dataclass of dataclasses):
    # ~3x cheaper, and it runs for every delivered message.
    reply = msg.reply
    tokens = reply.split(".")
    count = len(tokens)
    fields: _Picker | None
    if count == _V1_TOKENS:
        fields = _V1_FIELDS
    elif count >= _V2_MIN_TOKENS:
        fields = _V2_FIELDS
    else:
        fields = None
    if fields is None or tokens[0] != "$JS" or tokens[1] != "ACK":
        msg.metadata  # noqa: B018 - raises nats-py's own error for a non-JetStream reply
        raise NotJSMessageError
    name, durable, delivered, sequence, stamp = fields(tokens)
    return Delivery(
        stream=name or stream,
        consumer=durable or consumer,
        subject=msg.subject,
        payload=msg.data,
        headers=dict(msg.headers) if msg.headers else {},
        sequence=int(sequence),
        published_at=datetime.fromtimestamp(int(stamp) / 1e9, UTC),
        delivery_count=int(delivered),
        ack_token=reply,
    )


def ack_body(action: AckAction, delay: float | None) -> bytes:
    if action is AckAction.NAK and delay:
        if delay < 0:
            raise RequestError("delay", "must be zero or positive", value=delay, fix='e.g. "5s"')
        return b'-NAK {"delay": %d}' % round(delay * 1e9)
    body = _ACK_BODY.get(action)  # AckAction is an IntEnum: its plain int finds it too
    return body if body is not None else _ACK_BODY[AckAction(action)]  # ValueError: unknown


def check_token(token: str) -> None:
    if not token.startswith("$JS.") or ".ACK." not in token:
        raise RequestError(
            "ack_token",
            "not a NATS JetStream ack token",
            value=token[:80],
            fix="pass the ack_token of a message delivered by a nats broker, unchanged",
        )
