"""Dead letters: read what the subscribe loop copied aside, and replay it.

The subscribe loop (:mod:`workflow_eventbus.engine.subscriber`) copies an exhausted
message to ``eventbus.deadletter.<stream>.<consumer>`` (captured by the shared
stream ``EVENTBUS_DEADLETTER``) or to a consumer's own ``dead_letter_subject``.
A :class:`~workflow_eventbus.providers.base.DeadLetterStore`, which a provider
with the ``HasDeadLetters`` capability opens, reads that stream without
consuming it and removes single entries; :func:`replay` republishes an entry
to its original subject through the broker's provider, and removes it only
after the broker acknowledged the republish (a crash in between replays it
twice, never zero times). Nothing here knows which provider it talks to.

    store = await open_store(provider)
    letters = await store.list(stream="ORDERS", consumer="worker", limit=50)
    results = await replay(provider, store, letters)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.deadletter import DEAD_LETTER_STREAM, DeadLetter
from ..core.errors import EventbusError
from ..providers.base import (
    DeadLetterStore,
    OutboundMessage,
    Provider,
    PublishResult,
)
from ..providers.capabilities import require_dead_letters

__all__ = ["DeadLetterStore", "ReplayResult", "open_store", "replay"]


@dataclass(slots=True)
class ReplayResult:
    letter: DeadLetter
    published: PublishResult | None = None
    error: str = ""


async def replay(
    provider: Provider, store: DeadLetterStore, letters: list[DeadLetter]
) -> list[ReplayResult]:
    """Republish each letter to its original subject; remove it once the broker acked."""
    results = []
    for letter in letters:
        if not letter.subject:
            results.append(ReplayResult(letter, error="no original subject header; not replayed"))
            continue
        try:
            published = await provider.publish(
                OutboundMessage(letter.subject, letter.payload, letter.original_headers())
            )
            await store.remove(letter)
        except EventbusError as exc:
            results.append(ReplayResult(letter, error=str(exc)))
            continue
        results.append(ReplayResult(letter, published))
    return results


async def open_store(provider: Provider, dlq_stream: str = DEAD_LETTER_STREAM) -> DeadLetterStore:
    """The dead-letter store of ``provider`` over ``dlq_stream``; close it after use.

    A ConfigError names the providers that have dead letters when this one has not."""
    return await require_dead_letters(provider).dead_letters(dlq_stream)
