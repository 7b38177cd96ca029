"""Ephemeral consumers on Kafka (the capability ``tail`` reads through).

An ephemeral consumer is a reader of this process alone: a consumer without a
group, assigned every partition of the stream's topics that the filter can
match, from the start, the end, or ``last`` records before the end of each
partition. It commits nothing and the broker keeps nothing of it, so there is
nothing to expire (``idle`` and ``keep_ephemeral`` have no work to do) and
``delete_ephemeral`` just closes it. It is read with ``fetch`` and ``settle``
like a durable (leases and redelivery in memory). ``last`` counts records per
partition before the filter is applied, so with a filter on a wildcard topic it
can show fewer than ``last``.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer

from ...core.defaults import DEFAULT_ACK_WAIT, DEFAULT_MAX_ACK_PENDING
from ...core.names import EPHEMERAL_PREFIX
from ..base import HasEphemeralConsumers
from .member import Member, MemberConfig
from .streams import partitions_of, topics_for_filter

if TYPE_CHECKING:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    from .registry import StreamRecord


class KafkaEphemeral(HasEphemeralConsumers):
    """Ephemeral readers for :class:`~.provider.KafkaProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        _options: dict[str, Any]
        _members: dict[tuple[str, str], Member]
        log: logging.Logger

        @property
        def admin(self) -> AIOKafkaAdminClient: ...

        @property
        def reader(self) -> AIOKafkaConsumer: ...

        async def _stream(self, name: str) -> StreamRecord: ...

        async def _call(self, what: str, op: Any) -> Any: ...

    async def create_ephemeral(
        self,
        stream: str,
        filter_subject: str,
        *,
        idle: float,
        from_start: bool = False,
        last: int = 0,
    ) -> str:
        record = await self._stream(stream)
        topics = topics_for_filter(record, filter_subject)
        tps = await self._call("ephemeral", partitions_of(self.admin, [t.topic for t in topics]))
        begin = await self._call("ephemeral", self.reader.beginning_offsets(tps)) if tps else {}
        end = await self._call("ephemeral", self.reader.end_offsets(tps)) if tps else {}
        if from_start:
            start = dict(begin)
        else:
            start = {tp: max(end[tp] - max(last, 0), begin[tp]) for tp in tps}
        name = EPHEMERAL_PREFIX + secrets.token_hex(8)
        cfg = MemberConfig(
            stream=stream,
            consumer=name,
            topics={t.topic: t.id for t in topics},
            filter_subject=filter_subject,
            ack_wait=DEFAULT_ACK_WAIT,
            max_deliver=0,
            max_ack_pending=DEFAULT_MAX_ACK_PENDING,
        )
        member = Member(cfg, self._options, self.admin, self.log, start_at=start)
        try:
            await self._call("ephemeral", member.start())
        except BaseException:
            with contextlib.suppress(Exception):  # the start's error is the one to report
                await member.close()  # its consumer, started or not
            raise
        self._members[(stream, name)] = member
        return name

    async def keep_ephemeral(self, stream: str, name: str) -> None:
        return None  # nothing on the broker to keep alive

    async def delete_ephemeral(self, stream: str, name: str) -> None:
        member = self._members.pop((stream, name), None)
        if member is not None:
            await member.close()
