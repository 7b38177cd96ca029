"""Dead letters on JetStream: read a dead-letter stream by sequence, delete by sequence.

The store uses the provider's own connection (through its JetStream manager)
rather than opening a second one. That is sound because every call here is a
JetStream API request/reply (STREAM.INFO, STREAM.MSG.GET, STREAM.MSG.DELETE):
it shares the connection's reply inbox like ``ensure_stream`` does, consumes
nothing and holds no subscription, so nothing of it outlives a call. It also
means the store needs no credentials or TLS files of its own, follows the
provider's reconnects, and reports an outage as the provider does
(BrokerUnavailableError). ``close`` has nothing to release; closing the
provider ends the store's use.
"""

from __future__ import annotations

from collections.abc import Callable

import nats.js.errors as js_errors
from nats.js import JetStreamManager

from ...core.deadletter import DEAD_LETTER_STREAM, DeadLetter, dead_letter_filter
from ...core.defaults import DEFAULT_DEAD_LETTER_LIMIT
from ...core.errors import EventbusError, NotFoundError
from ..base import DeadLetterStore
from .errors import DELETE_FOUND_NONE, SEQUENCE_NOT_FOUND

Manager = Callable[[str], JetStreamManager]  # the provider's manager; raises when closed
Fail = Callable[[BaseException, str], EventbusError]  # a nats-py error as one of ours


class NatsDeadLetters(DeadLetterStore):
    """The letters of one dead-letter stream, oldest first."""

    def __init__(self, manager: Manager, fail: Fail, dlq_stream: str = DEAD_LETTER_STREAM) -> None:
        super().__init__(dlq_stream)
        self._manager = manager
        self._fail = fail

    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_DEAD_LETTER_LIMIT
    ) -> list[DeadLetter]:
        action = f'list dead letters of stream "{self.dlq_stream}"'
        jsm = self._manager(action)
        try:
            info = await jsm.stream_info(self.dlq_stream)
        except js_errors.NotFoundError as exc:
            raise NotFoundError(
                f'dlq: stream "{self.dlq_stream}" does not exist: nothing was dead-lettered '
                "yet (it is created with the first consumer that sets max_deliver)"
            ) from exc
        except Exception as exc:
            raise self._fail(exc, action) from exc
        seq, last = info.state.first_seq, info.state.last_seq
        # The shared stream files letters under eventbus.deadletter.<stream>.<consumer>,
        # so the server can skip the other consumers' letters; the headers decide.
        subject = (
            dead_letter_filter(stream, consumer) if self.dlq_stream == DEAD_LETTER_STREAM else None
        )
        out: list[DeadLetter] = []
        while seq and seq <= last and len(out) < limit:
            try:
                raw = await jsm.get_msg(self.dlq_stream, seq, subject=subject, next=True)
            except js_errors.NotFoundError:
                break  # nothing at or after seq (that matches)
            except Exception as exc:
                raise self._fail(exc, action) from exc
            if raw.seq is None:
                break
            letter = DeadLetter.parse(
                self.dlq_stream,
                raw.seq,
                raw.subject or "",
                dict(raw.headers or {}),
                raw.data or b"",
            )
            if letter.matches(stream, consumer):
                out.append(letter)
            seq = raw.seq + 1
        return out

    async def remove(self, letter: DeadLetter) -> None:
        action = f'remove dead letter {letter.dlq_sequence} of stream "{letter.dlq_stream}"'
        jsm = self._manager(action)
        try:
            await jsm.delete_msg(letter.dlq_stream, letter.dlq_sequence)
        except js_errors.APIError as exc:
            gone = isinstance(exc, js_errors.NotFoundError) or exc.err_code in (
                SEQUENCE_NOT_FOUND,
                DELETE_FOUND_NONE,
            )
            if not gone:  # a letter (or stream) already gone counts as removed
                raise self._fail(exc, action) from exc
        except Exception as exc:
            raise self._fail(exc, action) from exc

    async def close(self) -> None:
        return None  # the connection is the provider's
